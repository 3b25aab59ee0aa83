"""A bounded map: caches of id ↔ uuid on both sides of the wire keep constant memory on any backlog."""

from __future__ import annotations

from typing import Any


class LruMap:
    """A dict that forgets the entries least recently used beyond `size` (constant memory on any backlog).

    Two generations of plain dicts instead of an ordered dict: an entry read or written goes to the young one; when
    the young one is half of `size`, the old one is forgotten whole and the young one becomes old. An entry used
    within the last half of `size` uses is always kept, and at most `size` are held. A hit is one dict look-up (the
    receiver makes about nine a message; an OrderedDict's move_to_end made each five times dearer)."""

    def __init__(self, size: int = 200_000):
        self.size = size
        self.half = max(1, size // 2)
        self.young: dict[Any, Any] = {}
        self.old: dict[Any, Any] = {}

    def get(self, key: Any) -> Any:
        value = self.young.get(key)
        if value is None:
            value = self.old.get(key)
            if value is not None:
                self._keep(key, value)
        return value

    def put(self, key: Any, value: Any) -> None:
        self._keep(key, value)

    def pop(self, key: Any) -> None:
        self.young.pop(key, None)
        self.old.pop(key, None)

    def __len__(self) -> int:
        return len(self.young) + sum(1 for key in self.old if key not in self.young)

    def _keep(self, key: Any, value: Any) -> None:
        self.young[key] = value
        if len(self.young) >= self.half:
            self.old, self.young = self.young, {}
