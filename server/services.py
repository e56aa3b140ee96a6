"""Everything a request handler needs, built once at start-up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio
from nacl.signing import SigningKey

from push.setup import PushBridge, PushConfig
from push.worker import WorkerConfig
from server.gateway.hub import Hub
from server.passwords import PasswordHasher
from server.settings import Settings
from server.sweep_status import SweepStatus
from storage.accounts import AccountStore
from storage.attendance import AttendanceStore
from storage.audit import AuditStore
from storage.cancellation import CancellationStore
from storage.consent import ConsentStore
from storage.conversations import ConversationStore
from storage.database import Database
from storage.deletion import DeletionStore
from storage.devices import DeviceStore
from storage.erasure import ErasureStore
from storage.export_archive import ArchiveFolder
from storage.exports import ExportStore
from storage.files import BlobStore, FileStore
from storage.keyring import Keyring
from storage.live import LiveStore
from storage.logins import LoginRecordStore
from storage.messages import MessageStore
from storage.minors import MinorStore
from storage.notices import NoticeStore
from storage.org_cancellation import OrgCancellationStore
from storage.orgs import OrgStore
from storage.policies import PolicyStore
from storage.purge import PurgeStore
from storage.push_outbox import PushOutbox
from storage.push_registrations import PushRegistrationStore
from storage.receipts import ReceiptStore
from storage.requests import RequestStore
from storage.retention import RetentionStore
from storage.tokens import TokenStore
from storage.tombstones import TombstoneStore


def utc_now() -> datetime:
    return datetime.now(UTC)


class Nudge:
    """Wakes a waiting worker at once (e.g. the export worker, when a job is queued here)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> None:
        """Until nudged or `timeout_s` passed; a nudge before the call counts."""
        with trio.move_on_after(timeout_s):
            await self._event.wait()
        self._event = trio.Event()


def push_config(s: Settings) -> PushConfig:
    worker = WorkerConfig(
        batch=s.push_batch,
        lease_s=s.push_lease_s,
        max_attempts=s.push_max_attempts,
        backoff_base_s=s.push_backoff_base_s,
        backoff_cap_s=s.push_backoff_cap_s,
        expiry_s=s.push_expiry_s,
    )
    return PushConfig(
        worker=worker,
        workers=s.push_workers,
        send_timeout_s=s.push_send_timeout_s,
        ca_file=s.push_ca_file,
        apns_key_file=s.apns_key_file,
        apns_key_id=s.apns_key_id,
        apns_team_id=s.apns_team_id,
        apns_topics=tuple(s.apns_topics),
        apns_production_host=s.apns_production_host,
        apns_sandbox_host=s.apns_sandbox_host,
        apns_port=s.apns_port,
        fcm_service_account_file=s.fcm_service_account_file,
        fcm_base_url=s.fcm_base_url,
    )


@dataclass
class Services:
    settings: Settings
    db: Database
    identity: SigningKey
    passwords: PasswordHasher
    keyring: Keyring  # the accounts' data keys (storage.keyring)
    clock: Callable[[], datetime] = utc_now
    hub: Hub = field(default_factory=Hub)  # this process's live gateway connections
    sweep_status: SweepStatus = field(default_factory=SweepStatus)  # this process's sweeper
    orgs: OrgStore = field(init=False)
    accounts: AccountStore = field(init=False)
    devices: DeviceStore = field(init=False)
    tokens: TokenStore = field(init=False)
    logins: LoginRecordStore = field(init=False)
    conversations: ConversationStore = field(init=False)
    messages: MessageStore = field(init=False)
    files: FileStore = field(init=False)
    receipts: ReceiptStore = field(init=False)
    blobs: BlobStore = field(init=False)
    push_registrations: PushRegistrationStore = field(init=False)
    push: PushBridge = field(init=False)
    consent: ConsentStore = field(init=False)
    live: LiveStore = field(init=False)
    erasure: ErasureStore = field(init=False)
    attendance: AttendanceStore = field(init=False)
    policies: PolicyStore = field(init=False)
    minors: MinorStore = field(init=False)
    audit: AuditStore = field(init=False)
    retention: RetentionStore = field(init=False)
    requests: RequestStore = field(init=False)
    notices: NoticeStore = field(init=False)
    deletion: DeletionStore = field(init=False)
    tombstones: TombstoneStore = field(init=False)
    cancellations: CancellationStore = field(init=False)
    org_cancellations: OrgCancellationStore = field(init=False)
    purge: PurgeStore = field(init=False)
    exports: ExportStore = field(init=False)
    archives: ArchiveFolder = field(init=False)
    export_nudge: Nudge = field(default_factory=Nudge)  # a job was queued in this process

    def __post_init__(self) -> None:
        self.orgs = OrgStore(self.db, self.keyring)
        self.accounts = AccountStore(self.db, self.keyring)
        self.devices = DeviceStore(self.db)
        self.tokens = TokenStore(self.db)
        self.logins = LoginRecordStore(self.db)
        self.conversations = ConversationStore(self.db)
        self.messages = MessageStore(self.db, self.keyring, self.settings.push_grace_s)
        self.files = FileStore(self.db, self.keyring)
        self.receipts = ReceiptStore(self.db, self.settings.push_grace_s)
        self.blobs = BlobStore(self.settings.data_dir / "files")
        self.push_registrations = PushRegistrationStore(self.db)
        self.consent = ConsentStore(self.db)
        self.live = LiveStore(self.db)
        self.erasure = ErasureStore(self.db)
        self.attendance = AttendanceStore(self.db)
        self.policies = PolicyStore(self.db)
        self.minors = MinorStore(self.db, self.keyring)
        self.audit = AuditStore(self.db)
        self.retention = RetentionStore(self.db)
        self.requests = RequestStore(self.db)
        self.notices = NoticeStore(self.db)
        self.deletion = DeletionStore(self.db)
        self.tombstones = TombstoneStore(self.db)
        self.cancellations = CancellationStore(self.db, self.keyring)
        self.org_cancellations = OrgCancellationStore(self.db, self.keyring)
        self.purge = PurgeStore(self.db)
        self.exports = ExportStore(self.db, self.keyring)
        self.archives = ArchiveFolder(self.settings.data_dir / "exports")
        self.push = PushBridge(push_config(self.settings), PushOutbox(self.db, self.keyring))
