"""A tester device's live-location sharing (the mix's `live` kind), frame by frame."""

from __future__ import annotations

import time
import uuid

from loadtest.live import SESSION_S, LiveSharing, Target
from loadtest.observe import LiveCounts
from protocol import Err, ErrorCode, LiveEnd, LiveOk, LivePos, LiveStart, LiveStop

HOME = Target(0, uuid.uuid4().bytes)
TEAM = Target(1, uuid.uuid4().bytes)


def started(sharing: LiveSharing, target: Target) -> bytes:
    """Pick `target`, answer its `live_start` with a session; the session id."""
    sharing.pick(target)
    start = next(f for f in sharing.take(10) if isinstance(f, LiveStart))
    session = uuid.uuid4().bytes
    sharing.on_ok(LiveOk(cid=start.cid, id=session, until=start.until))
    return session


def test_the_first_pick_starts_a_session_and_its_update_follows_the_live_ok() -> None:
    counts = LiveCounts()
    sharing = LiveSharing(7, counts)
    sharing.pick(HOME)
    (start,) = sharing.take(10)
    assert isinstance(start, LiveStart)
    assert (start.conv, start.scope) == (HOME.conv, "conversation")
    in_an_hour = time.time() * 1000 + SESSION_S * 1000
    assert in_an_hour - 60_000 < start.until <= in_an_hour
    sharing.pick(HOME)  # while the start is under way: one update follows the answer
    assert sharing.take(10) == []
    assert sharing.unsettled == 1  # the answer is awaited (the drain waits for it)

    session = uuid.uuid4().bytes
    sharing.on_ok(LiveOk(cid=start.cid, id=session, until=start.until))
    (first,) = sharing.take(10)
    assert isinstance(first, LivePos) and first.id == session
    sharing.pick(HOME)
    (second,) = sharing.take(10)
    assert isinstance(second, LivePos) and second.id == session
    assert (second.lat, second.lon) != (first.lat, first.lon)  # it moves, a little
    assert abs(second.lat - first.lat) < 1e-3
    assert (counts.picks, counts.merged, counts.starts, counts.started) == (3, 1, 1, 1)
    assert counts.updates_sent == 2 and counts.sent_by_conversation == {HOME.index: 2}
    assert sharing.unsettled == 0


def test_each_conversation_has_its_own_session_and_updates_wait_for_a_batch() -> None:
    counts = LiveCounts()
    sharing = LiveSharing(1, counts)
    home, team = started(sharing, HOME), started(sharing, TEAM)
    sharing.take(10)  # the two first updates
    sharing.pick(HOME)
    sharing.pick(TEAM)
    sharing.pick(HOME)  # not written yet: merged with the one owed
    (one,) = sharing.take(1)
    (two,) = sharing.take(1)
    assert sharing.take(1) == []
    assert [one.id, two.id] == [home, team]  # type: ignore[union-attr]
    assert counts.merged == 1 and counts.updates_sent == 4


def test_a_refused_start_is_counted_and_the_next_pick_starts_again() -> None:
    counts = LiveCounts()
    sharing = LiveSharing(1, counts)
    sharing.pick(HOME)
    (start,) = sharing.take(10)
    assert isinstance(start, LiveStart)
    refusal = Err(
        code=ErrorCode.CONSENT_NOT_GRANTED, message="no", ref=start.cid, ref_type="live_start"
    )
    assert sharing.on_err(refusal)
    assert counts.start_refusals == {"consent_not_granted": 1} and counts.started == 0
    sharing.pick(HOME)
    (again,) = sharing.take(10)
    assert isinstance(again, LiveStart) and again.cid != start.cid


def test_an_update_refused_as_ended_stops_the_sessions_and_starts_anew() -> None:
    counts = LiveCounts()
    sharing = LiveSharing(1, counts)
    home = started(sharing, HOME)
    sharing.take(10)
    ended = Err(code=ErrorCode.LIVE_SESSION_ENDED, message="ended", ref_type="live_pos")
    assert sharing.on_err(ended)
    assert sharing.take(10) == [LiveStop(id=home)]  # which one ended is not said
    sharing.pick(HOME)
    (start,) = sharing.take(10)
    assert isinstance(start, LiveStart)
    assert counts.update_refusals == {"live_session_ended": 1}
    # A refusal of something else is no business of the live sessions.
    other = Err(code=ErrorCode.NOT_MEMBER, message="no", ref="a.0.1.2", ref_type="send")
    assert not sharing.on_err(other)


def test_a_rate_limited_update_keeps_the_session() -> None:
    counts = LiveCounts()
    sharing = LiveSharing(1, counts)
    home = started(sharing, HOME)
    sharing.take(10)
    assert sharing.on_err(
        Err(code=ErrorCode.RATE_LIMITED, message="slow down", ref_type="live_pos")
    )
    sharing.pick(HOME)
    assert sharing.take(10)[0].id == home  # type: ignore[union-attr]


def test_sessions_outlive_a_reconnect_but_unanswered_starts_do_not() -> None:
    counts = LiveCounts()
    sharing = LiveSharing(1, counts)
    home = started(sharing, HOME)
    sharing.take(10)
    sharing.pick(TEAM)
    (lost,) = sharing.take(10)
    assert isinstance(lost, LiveStart)
    sharing.on_connection()  # the answer to `lost` went with the old connection
    assert counts.starts_unanswered == 1
    sharing.pick(HOME)
    sharing.pick(TEAM)
    update, start = sharing.take(10)
    assert isinstance(update, LivePos) and update.id == home
    assert isinstance(start, LiveStart) and start.cid != lost.cid
    # Should the old answer turn up after all, that session is stopped, not kept.
    stray = uuid.uuid4().bytes
    sharing.on_ok(LiveOk(cid=lost.cid, id=stray, until=lost.until))
    assert sharing.take(10) == [LiveStop(id=stray)]


def test_the_end_of_the_run_stops_every_session_even_one_still_starting() -> None:
    counts = LiveCounts()
    sharing = LiveSharing(1, counts)
    home = started(sharing, HOME)
    sharing.pick(TEAM)
    frames = sharing.take(10)
    start = next(f for f in frames if isinstance(f, LiveStart))
    sharing.close()
    sharing.pick(HOME)  # too late: nothing more is sent
    assert sharing.take(10) == [LiveStop(id=home)]
    team = uuid.uuid4().bytes
    sharing.on_ok(LiveOk(cid=start.cid, id=team, until=start.until))
    assert sharing.take(10) == [LiveStop(id=team)]
    assert counts.stops == 2
    # A stop is settled when its `live_end` comes back (the drain waits for both).
    assert sharing.unsettled == 2
    me = uuid.uuid4().bytes
    for session in (home, team):
        sharing.on_end(LiveEnd(id=session, conv=HOME.conv, who=me, reason="stopped"))
    assert sharing.unsettled == 0 and counts.stops_confirmed == 2


def test_stops_whose_answer_went_with_the_connection_are_written_again() -> None:
    counts = LiveCounts()
    sharing = LiveSharing(1, counts)
    home = started(sharing, HOME)
    sharing.close()
    assert sharing.take(10) == [LiveStop(id=home)]
    sharing.on_connection()
    assert sharing.take(10) == [LiveStop(id=home)]
    # It had reached the server after all: the second one is refused, and nothing waits.
    ended = Err(code=ErrorCode.LIVE_SESSION_ENDED, message="ended", ref_type="live_stop")
    assert sharing.on_err(ended)
    assert sharing.unsettled == 0 and counts.stop_refusals == {"live_session_ended": 1}


def test_a_live_end_of_our_session_forgets_it() -> None:
    counts = LiveCounts()
    sharing = LiveSharing(1, counts)
    home = started(sharing, HOME)
    sharing.take(10)
    me = uuid.uuid4().bytes
    sharing.on_end(LiveEnd(id=home, conv=HOME.conv, who=me, reason="expired"))
    sharing.pick(HOME)
    (start,) = sharing.take(10)
    assert isinstance(start, LiveStart)
    assert counts.ends_received == 1
