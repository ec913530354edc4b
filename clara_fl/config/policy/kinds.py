"""What an argument of a catalogued class is to the restricted policy, and how a whole class is admitted."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["ArgRule", "ClassRule", "Family", "Kind", "SENSITIVE"]


class Kind(str, Enum):
    """The kinds of argument value; the value of each is its spelling in a site's catalog."""

    #: Plain data: numbers, flags, lists, built components, config code. A string that names something
    #: importable (``os.system``, ``eval``, ``json``) is refused: the class is not known to take a name there.
    DATA = "data"
    #: A dictionary key, a label or an option word the class looks up in its own fixed table: any string.
    WORD = "word"
    #: A file or folder the class reads: inside the job's folder or the site's data folders.
    PATH_READ = "path-read"
    #: A folder or file the class writes (its default included): inside the job's folder.
    PATH_WRITE = "path-write"
    #: A part of a file name the class joins to a checked folder: no separator, not ``..``.
    FILE_NAME = "file-name"
    #: A mapping (or list) whose keys become parts of file names (a CheckpointSaver's ``save_dict``).
    FILE_NAME_KEYS = "file-name-keys"
    #: A name the class turns into a Python object (``reader``): one of the rule's ``allowed`` objects.
    NAME = "name"
    #: A switch that unpickles, downloads or compiles when it is true: must be false (Python's truthiness).
    FLAG_FALSE = "flag-false"
    #: A switch that keeps loading safe (``weights_only``): must be true, the default included.
    FLAG_TRUE = "flag-true"
    #: Options passed through to another system, or a callable that computes paths: only absent/empty.
    REFUSED = "refused"


#: Kinds whose value must be known before anything is built: config code there is refused.
SENSITIVE = frozenset(Kind) - {Kind.DATA, Kind.WORD}


@dataclass(frozen=True)
class ArgRule:
    """How one argument is judged.

    Args:
        kind: what the value is.
        allowed: for :attr:`Kind.NAME`, the dotted names of the objects the argument may name.
        what: for :attr:`Kind.NAME`, how the list reads in messages ("MONAI's image readers"); for the
            other kinds, why the rule exists ("torch.load unpickles any object when it is false").
    """

    kind: Kind
    allowed: tuple[str, ...] = ()
    what: str = ""

    @property
    def short_names(self) -> tuple[str, ...]:
        """The allowed objects by class name, as messages show them."""
        return tuple(dict.fromkeys(name.rsplit(".", 1)[-1] for name in self.allowed))


@dataclass(frozen=True)
class ClassRule:
    """A catalogued class: the rules of its arguments.

    A parameter of the class's signature that ``args`` does not name is :attr:`Kind.DATA`, or
    :attr:`Kind.WORD` when its name is one of MONAI's and PyTorch's option words or keys
    (:func:`clara_fl.config.policy.builtin.is_word_argument`); the catalog lists every parameter that is anything
    else. A keyword the signature does not name goes to the class's
    ``**kwargs`` and on to another system: it is refused unless ``args`` names it, it is a parameter of the
    class named by ``forwards_to`` (then :attr:`Kind.DATA`), or ``extra`` says how any such keyword is judged.

    Args:
        args: rules by argument name.
        forwards_to: the dotted name of the class the ``**kwargs`` are handed to, unchanged.
        extra: the rule for any other ``**kwargs`` keyword; None refuses them.
        passthrough: where the ``**kwargs`` go, for messages.
        why: why the class cannot reach code, pickle, network or a path beyond its catalogued arguments.
        generic: the rule of a :class:`Family` member: unlisted arguments follow the generic rules.
    """

    args: Mapping[str, ArgRule] = field(default_factory=dict)
    forwards_to: str = ""
    extra: ArgRule | None = None
    passthrough: str = ""
    why: str = ""
    generic: bool = False

    def merged(self, other: ClassRule) -> ClassRule:
        """This rule with ``other``'s arguments and settings on top (a site's entry over the built-in one)."""
        return ClassRule(
            args={**self.args, **other.args},
            forwards_to=other.forwards_to or self.forwards_to,
            extra=other.extra if other.extra is not None else self.extra,
            passthrough=other.passthrough or self.passthrough,
            why=other.why or self.why,
        )


@dataclass(frozen=True)
class Family:
    """Every class defined in a module tree whose constructors only store plain values (the long tail).

    Its classes' arguments are judged by the generic rules: the catalog's flag names by their rule, option
    words (:data:`clara_fl.config.policy.builtin.WORD_ARGS`) as words, an argument whose name says it is a
    path, a file or a URL refused, every other one data, and ``**kwargs`` refused.

    Args:
        module: the module tree (``monai.transforms``).
        why: why its constructors cannot reach code, pickle, network or a path.
        excluded_modules: sub-trees that do more (``monai.transforms.io``).
        excluded_classes: class names that do more (``TorchVision``: names a torchvision class); the
            dictionary variants (``d``, ``D``, ``Dict``) of each are excluded too.
    """

    module: str
    why: str
    excluded_modules: tuple[str, ...] = ()
    excluded_classes: frozenset[str] = frozenset()

    def holds(self, module_name: str, class_name: str) -> bool:
        """Whether a class named ``class_name`` defined in ``module_name`` belongs to this family."""
        if not _under(module_name, (self.module,)) or _under(module_name, self.excluded_modules):
            return False
        base = class_name
        for suffix in ("Dict", "D", "d"):
            if class_name.endswith(suffix) and class_name[: -len(suffix)] in self.excluded_classes:
                base = class_name[: -len(suffix)]
        return base not in self.excluded_classes


def _under(module_name: str, trees: tuple[str, ...]) -> bool:
    return any(module_name == tree or module_name.startswith(tree + ".") for tree in trees)
