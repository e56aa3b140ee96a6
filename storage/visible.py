"""Who may see a stored message: one SQL condition, shared by every query that asks."""

# A member (`cm`, a conversation_members row) sees a message (`m`) stored while they were a
# member, if its consent scope names them.
VISIBLE = """m.pos > cm.joined_pos AND (cm.left_pos IS NULL OR m.pos <= cm.left_pos)
    AND (m.scope IS NULL OR cm.account_id = ANY(m.scope) OR cm.account_id = m.sender_id)"""
