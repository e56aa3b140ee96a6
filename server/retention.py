"""The retention schedule: every kind of data obrol erases on a clock, how long it is kept,
and the promise that period keeps - in one place. The one sweeper (server/sweeper.py) runs
every rule here that has a `sweep` (server/sweeps.py), in this order, in every server
process.

Each sweep erases in bounded batches (`sweep_batch` rows, one short transaction each, rows
another process holds skipped with SKIP LOCKED; erasing messages takes the stream lock
for its batch, as their tombstones need positions: storage.tombstones), rests between
batches so that a backlog takes at most `sweep_busy_fraction` of the time, and gives each
rule at most PASS_BATCHES batches per pass, so a large backlog in one rule never holds up
another (live sessions end on time while a year of messages is purged). A rule that had
more to do makes the sweeper start its next pass at once instead of sleeping. What was
erased is counted per rule and logged as counts, never contents.

Adding a rule: write a sweep in server/sweeps.py - `async (services, now) -> (Erased,
more)` - whose batches run through `batches` (`older_than` makes the whole sweep for a
store call that deletes up to `limit` rows older than a number of days), give it a
setting with its unit in the name and the promise's minimum enforced in
server/settings.py, and add a `Rule` to `rules()`. `schedule(settings)` (shown at
`GET /v1/orgs/{org}/retention`) then lists it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from server.settings import Settings
from server.sweeps import (
    Sweep,
    audit_entries,
    auth_tokens,
    cancelled_accounts,
    cancelled_orgs,
    consent_clocks,
    export_archives,
    live_sessions_ended,
    live_sessions_open,
    login_records,
    notices,
    rights_requests,
    tombstones,
)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str  # in logs, the status and the schedule
    data: str  # what is erased
    period: Callable[[Settings], str]  # how long it is kept, from the settings, in words
    source: str  # the promise it keeps
    sweep: Sweep | None  # None: kept by another part of the server (`period` says which)


def org_messages_rule(sweep: Sweep | None) -> Rule:
    return Rule(
        "org_messages",
        "stored messages (with their receipts, the file rows and blobs they shared) older than "
        "their conversation's retention, or else their organization's",
        lambda s: (
            "the organization's `message_retention_days`, or the conversation's own "
            "setting (none: kept until deleted); a ceiling for every stored message, whatever "
            "its consent tag says"
        ),
        "policies 000 and 004: the organization controls its business data; the consent tag's "
        '`retention: "default"` (PROTOCOL.md 5.4) is this setting',
        sweep,
    )


def rules(org_messages: Sweep | None = None, orphan_blobs: Sweep | None = None) -> tuple[Rule, ...]:
    """The schedule, in the order the sweeper runs it. `org_messages`, `orphan_blobs`: those
    rules' sweeps (they keep a position between passes, so each sweeper brings its own)."""
    return (
        Rule(
            "live_sessions_open",
            "live-location sessions past their end: ended, and everyone who saw them told",
            lambda s: (
                f"until the session's `until`, at most {s.live_location_max_s} s "
                "(`live_location_max_s`)"
            ),
            "the person's location is shared only while they share it (policies 002, 003)",
            live_sessions_open,
        ),
        Rule(
            "consent_clocks",
            "messages whose consent tag's retention or expiry ran out (with their receipts, "
            "the file rows and blobs they shared)",
            lambda s: "the tag's `retention` seconds or `expires_at`, whichever comes first",
            "data processed under consent is kept no longer than the person agreed to "
            "(policies 000-004)",
            consent_clocks,
        ),
        org_messages_rule(org_messages),
        Rule(
            "login_records",
            "login records (every attempt: time, login name, address, client, outcome)",
            lambda s: (
                f"{s.login_records_retention_days} days (`login_records_retention_days`, "
                "at least 92: 3 calendar months)"
            ),
            "policy 003, article 3: log-in records are kept 3 months",
            login_records,
        ),
        Rule(
            "tombstones",
            "tombstones: which message of which conversation was erased, why and when "
            "(never its sender or contents), for devices that were offline at the time",
            lambda s: (
                f"{s.tombstones_retention_days} days (`tombstones_retention_days`); a device "
                "offline longer reads its history again (PROTOCOL.md 6.9)"
            ),
            "deletion reaches every device: what a person deleted disappears from the "
            "devices that hold it, including those offline when it was deleted",
            tombstones,
        ),
        Rule(
            "live_sessions_ended",
            "ended live-location sessions (who shared with which conversation, when; never a "
            "position)",
            lambda s: (
                f"{s.live_sessions_retention_days} days after the end "
                "(`live_sessions_retention_days`)"
            ),
            "policy 003, article 3: destroyed once its purpose is achieved, within 7 days",
            live_sessions_ended,
        ),
        Rule(
            "rights_requests",
            "closed data-rights requests (kind, dates, status, the person's words, the answer)",
            lambda s: (
                f"{s.requests_retention_days} days after closing "
                "(`requests_retention_days`, at least 3 years)"
            ),
            "policy 003, article 3: records of complaint and dispute handling, 3 years",
            rights_requests,
        ),
        Rule(
            "notices",
            "service-ending and security-incident notices",
            lambda s: (
                f"{s.notices_retention_days} days after sending, or after the last day "
                "of service for a service-ending notice (`notices_retention_days`)"
            ),
            "policies 000, 002, 004: members are told of incidents and of the end of the "
            "service; kept so that those who were away can read them",
            notices,
        ),
        Rule(
            "cancelled_accounts",
            "every row of a cancelled account (messages it sent with their receipts, files and "
            "blobs, its receipts, devices, tokens, login records - also those under its email "
            "address -, consents and their history, policy acceptances, attendance, live "
            "sessions, push registrations, conversation memberships, notices, guardian "
            "consents, its data key's tombstone) and then the account; its requests stay, "
            "naming nobody",
            lambda s: (
                f"purged from {s.cancelled_accounts_purge_delay_h} h after the cancellation "
                "(`cancelled_accounts_purge_delay_h`, at most 120); unreadable from the "
                "cancellation on (its data key is destroyed then)"
            ),
            'policy 000 (E): "once the account is cancelled, no information will be '
            'retained"; policy 003, article 3: destroyed without delay, within 7 days',
            cancelled_accounts,
        ),
        Rule(
            "cancelled_orgs",
            "a deleted organization's own rows (conversations, files, sites, attendance, policy "
            "versions, purposes switched off, notices, requests, departments) and then the "
            "organization, once every account in it is purged",
            lambda s: (
                "right after the last of its accounts (`cancelled_accounts`); the accounts are "
                "unreadable from the deletion on"
            ),
            "policies 000 and 004: data migration before an organization cancels, nothing "
            "retained once it has",
            cancelled_orgs,
        ),
        Rule(
            "auth_tokens",
            "expired sign-in tokens (hashes only: device, account, family, dates), revoked or not",
            lambda s: (
                f"{s.auth_tokens_retention_days} days after they expired "
                "(`auth_tokens_retention_days`); a revoked one is kept until then too, so a "
                "rotated-away refresh token presented again still ends its family"
            ),
            "nothing is kept once it has no use: an expired token only lets the server "
            "answer `token_expired` instead of `unauthenticated`",
            auth_tokens,
        ),
        Rule(
            "audit_log",
            "audit-log entries (who did what to whose data, when: ids and counts only)",
            lambda s: (
                f"{s.audit_retention_days} days (`audit_retention_days`, at least 183: 6 "
                "months), pruned only up to a signed checkpoint (server/audit.py)"
            ),
            "access records are kept at least 6 months and protected from tampering (policy 003)",
            audit_entries,
        ),
        Rule(
            "orphan_blobs",
            "files in the files folder with no file row (a crash between deleting a file's "
            "row and its blob), and temporary files of uploads that never finished",
            lambda s: (
                f"{s.orphan_blob_grace_s} s after they were last written "
                "(`orphan_blob_grace_s`; the folder is walked at most hourly)"
            ),
            "what the other rules erase is erased from disk too, even after a crash",
            orphan_blobs,
        ),
        Rule(
            "export_archives",
            "export archives (the zip of a person's or an organization's data, sealed on disk)",
            lambda s: (
                f"until its download link is used, at most {s.export_link_ttl_s // 3600} h "
                f"({s.export_link_ttl_s} s, `export_link_ttl_s`) after it is ready"
            ),
            "the copy a person asked for is theirs to take, not ours to keep (policies 000-004)",
            export_archives,
        ),
        Rule(
            "account_data",
            "what belongs to an account: profile, devices, consent grants and history, policy "
            "acceptances, attendance records, push registrations, guardian consents",
            lambda s: (
                "while the account exists; erased with it when it is cancelled (its data key "
                "destroyed at once, its rows purged within 7 days)"
            ),
            "policies 000-004: once the account is cancelled, no information is retained",
            None,
        ),
        Rule(
            "push_results",
            "push providers' answers other than acceptance (per device: when, outcome, reason)",
            lambda s: "1 day: pruned by the push bridge's outbox worker (push/worker.py)",
            "kept only as long as it helps find out why a device gets no pushes",
            None,
        ),
    )


def periods(settings: Settings) -> dict[str, str]:
    """Each rule's period in words, by name (what the access summary quotes)."""
    return {r.name: r.period(settings) for r in rules()}


def schedule(settings: Settings) -> list[dict[str, str]]:
    """Every rule as `{"name", "data", "period", "source"}`, the periods from `settings`."""
    return [
        {"name": r.name, "data": r.data, "period": r.period(settings), "source": r.source}
        for r in rules()
    ]
