"""vocab: log-key vocabulary, template text <-> stable integer key id.

Contract: ids 0..2 are reserved (PAD for left-padding windows, UNK for messages no known template matches,
EOS for the end of a session); template keys start at `NUM_RESERVED`. An id, once given, never changes
meaning: a generalised template keeps its id and the change is recorded. `to_dict()`/`from_dict()` give a
JSON-safe form stored with the model artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ArtifactError

PAD, UNK, EOS = 0, 1, 2
RESERVED = ("<PAD>", "<UNK>", "<EOS>")
NUM_RESERVED = len(RESERVED)


@dataclass
class Vocabulary:
    """Key id -> template text; index i of `templates` is key id i."""

    templates: list[str] = field(default_factory=lambda: list(RESERVED))
    # (key id, old template, new template) for every generalisation, oldest first.
    changes: list[tuple[int, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.templates)

    def add(self, template: str) -> int:
        self.templates.append(template)
        return len(self.templates) - 1

    def rename(self, key: int, template: str) -> None:
        old = self.templates[key]
        if old != template:
            self.templates[key] = template
            self.changes.append((key, old, template))

    def template(self, key: int) -> str:
        return self.templates[key] if 0 <= key < len(self.templates) else RESERVED[UNK]

    def to_dict(self) -> dict[str, Any]:
        return {"templates": list(self.templates), "changes": [list(c) for c in self.changes]}

    @classmethod
    def from_dict(cls, data: Any) -> Vocabulary:
        try:
            templates = [str(t) for t in data["templates"]]
            changes = [(int(k), str(a), str(b)) for k, a, b in data.get("changes", [])]
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"vocabulary: malformed ({e})") from None
        if tuple(templates[:NUM_RESERVED]) != RESERVED:
            raise ArtifactError("vocabulary: reserved keys PAD/UNK/EOS missing or out of order")
        return cls(templates, changes)
