"""Who may see a stored message: one SQL condition, shared by every query that asks."""

# A member (`cm`, a conversation_members row) sees a message (`m`) stored while they were a
# member, if its consent scope names them.
VISIBLE = """m.pos > cm.joined_pos AND (cm.left_pos IS NULL OR m.pos <= cm.left_pos)
    AND (m.scope IS NULL OR cm.account_id = ANY(m.scope) OR cm.account_id = m.sender_id)"""

# The same rule for catch-up, which reads one conversation at a time above a cursor ($2):
# the lower bound folded into one row comparison, which only the (conversation_id, pos)
# index answers - so the planner reads that conversation's rows above the cursor instead
# of stepping through every conversation's rows by position.
VISIBLE_ABOVE_CURSOR = """m.conversation_id = cm.conversation_id
    AND (m.conversation_id, m.pos) > (cm.conversation_id, greatest($2, cm.joined_pos))
    AND (cm.left_pos IS NULL OR m.pos <= cm.left_pos)
    AND (m.scope IS NULL OR cm.account_id = ANY(m.scope) OR cm.account_id = m.sender_id)"""
