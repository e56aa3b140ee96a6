"""Who is who in a run: users, their devices, the conversations and their members.

Pure and deterministic for a given config (the seed included), so a cached provisioning
can be matched to it by `signature()`. Users are numbered 0..U-1 and devices 0..N-1;
device `d` belongs to user `d % U`, and all devices of a user live in worker `user % W`.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

from loadtest.config import GroupClass, RunConfig


@dataclass(frozen=True, slots=True)
class Topology:
    users: int
    devices: int
    workers: int
    conversations: tuple[tuple[int, ...], ...]
    """Member users of each conversation; the first one creates it."""

    def user_of(self, device: int) -> int:
        return device % self.users

    def worker_of_user(self, user: int) -> int:
        return user % self.workers

    def devices_of(self, user: int) -> list[int]:
        return list(range(user, self.devices, self.users))

    def conversations_of_users(self) -> list[list[int]]:
        """For each user, the indexes of the conversations they are in."""
        member_of: list[list[int]] = [[] for _ in range(self.users)]
        for index, members in enumerate(self.conversations):
            for user in members:
                member_of[user].append(index)
        return member_of

    def expected_deliveries_per_message(self) -> float:
        """Mean number of member devices a message is delivered to (conversations equally
        likely to be chosen)."""
        if not self.conversations:
            return 0.0
        total = sum(sum(len(self.devices_of(u)) for u in members) for members in self.conversations)
        return total / len(self.conversations)


def build_topology(config: RunConfig) -> Topology:
    """Lay out the conversations: members are dealt from a shuffled deck of users, so
    membership is spread evenly and nobody is twice in one conversation."""
    rng = random.Random(config.seed)  # noqa: S311 (a simulation, not security)
    deck: list[int] = []
    conversations: list[tuple[int, ...]] = []
    for group in config.groups:
        for _ in range(group.count):
            members: list[int] = []
            chosen: set[int] = set()
            while len(members) < group.size:
                if not deck:  # a new round: everyone not yet in this conversation
                    deck = [u for u in range(config.users) if u not in chosen]
                    rng.shuffle(deck)
                user = deck.pop()
                chosen.add(user)
                members.append(user)
            conversations.append(tuple(members))
    return Topology(config.users, config.devices, config.workers, tuple(conversations))


def signature(users: int, groups: tuple[GroupClass, ...], seed: int) -> str:
    """A short name for a conversation layout, to find it again in the provisioning cache."""
    spec = json.dumps([users, [[g.size, g.count] for g in groups], seed])
    return hashlib.sha256(spec.encode()).hexdigest()[:16]
