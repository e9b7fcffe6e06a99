"""A Griffe extension for the API reference: a class shows the members a user calls, not what
runtime inspection finds on every class (``__doc__``, ``__module__``, dataclass fields' dunders)
or a lazy layer's ``cls_to_become``."""
import griffe

HIDDEN = {"cls_to_become"}


class ClassMembers(griffe.Extension):
    def on_class_members(self, *, cls, **kwargs) -> None:
        for name in [n for n in cls.members if n.startswith("_") or n in HIDDEN]:
            del cls.members[name]
