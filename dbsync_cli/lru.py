"""A bounded map: caches of id ↔ uuid on both sides of the wire keep constant memory on any backlog."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class LruMap:
    """A dict that forgets the least recently used entries beyond `size` (constant memory on any backlog)."""

    def __init__(self, size: int = 200_000):
        self.size = size
        self.data: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        if len(self.data) > self.size:
            self.data.popitem(last=False)

    def pop(self, key: Any) -> None:
        self.data.pop(key, None)

