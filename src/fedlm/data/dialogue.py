"""Shakespeare as instruction tuning: each speaking role answers the speech before its own.

The clients are those of `fedlm.data.shakespeare.load_shakespeare`, the split by speaking
role of LEAF (Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings",
arXiv:1812.01097): one client per (play, role) with at least `min_lines` verse lines. LEAF's
task is next-character prediction over a role's lines; here a sample is one turn of the
dialogue, so that the role's data teaches a chat model to reply in that role's voice:

- the user turn (the cue) names the play, act and scene and the previous speaker, quotes the
  last `cue_lines` verse lines of the previous speech and asks for a reply as the role;
- the assistant turn (the reply) is the first `reply_lines` verse lines of the role's speech.

A speech makes a conversation only when the speech directly before it is in the same act
and scene and has another speaker (another client id): the first speech of a scene answers
nobody, and two speeches of one role in a row (the name printed again after a stage
direction, or someone in between who says no line) do not pair. A song or dumb show marked
by a label (`SONG.`) is dropped by the parser but does not end the scene, so the speech
after it answers the speech before it. Roles left without a conversation (a Chorus that
speaks alone) are left out of the federation.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from fedlm.data.conversations import Conversation, make_conversation
from fedlm.data.shakespeare import (
    Play,
    Speech,
    _check_arguments,
    _choose,
    _client_id,
    _load_plays,
    _role_samples,
)
from fedlm.data.types import FederatedDataset, check_seed, check_test_fraction, make_client


def _where(speech: Speech) -> str:
    """The label of a speech's place: "Act I, Scene II", or "Prologue" outside any act."""
    parts = []
    for heading in (speech.act, speech.scene):
        kind, _, number = heading.partition(" ")
        if kind:
            parts.append(f"{kind.capitalize()} {number}".strip())
    return ", ".join(parts)


def _cue(title: str, previous: Speech, role: str, *, cue_lines: int) -> str:
    """The user turn: where we are, who spoke, their last `cue_lines` lines, whom to answer as."""
    place = ", ".join(p for p in (title, _where(previous)) if p)
    lines = "\n".join(previous.text.split("\n")[-cue_lines:])
    return f"{place}.\n{previous.speaker}:\n{lines}\n\nReply as {role}."


# (play title, previous speech, the role's speech)
Turn = tuple[str, Speech, Speech]


def _turns(plays: tuple[Play, ...], roles: set[str]) -> dict[str, list[Turn]]:
    """client id -> the speeches of that role that answer another speaker, in play order."""
    found: dict[str, list[Turn]] = {}
    for play in plays:
        ids = {name: _client_id(play.slug, name) for name in {s.speaker for s in play.dialogue}}
        for previous, speech in pairwise(play.dialogue):
            cid = ids[speech.speaker]
            same_scene = (previous.act, previous.scene) == (speech.act, speech.scene)
            if cid in roles and same_scene and ids[previous.speaker] != cid:
                found.setdefault(cid, []).append((play.title, previous, speech))
    return found


def _conversations(
    client_id: str, turns: list[Turn], *, cue_lines: int, reply_lines: int
) -> list[Conversation]:
    """A role's conversations, one per turn; k in the source is the turn's index."""
    conversations = []
    for k, (title, previous, speech) in enumerate(turns):
        cue = _cue(title, previous, speech.speaker, cue_lines=cue_lines)
        reply = "\n".join(speech.text.split("\n")[:reply_lines])
        source = f"shakespeare:{client_id}#{k}"
        conversations.append(make_conversation([("user", cue), ("assistant", reply)], source))
    return conversations


def _check_line_counts(cue_lines: int, reply_lines: int) -> None:
    for name, value in (("cue_lines", cue_lines), ("reply_lines", reply_lines)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def load_shakespeare_dialogue(
    *,
    min_lines: int = 20,
    test_fraction: float = 0.2,
    seed: int = 0,
    plays_dir: Path | None = None,
    max_clients: int | None = None,
    cue_lines: int = 2,
    reply_lines: int = 4,
) -> FederatedDataset:
    """Shakespeare's roles as instruction-tuning clients ("shakespeare-dialogue").

    Client ids, the `min_lines` rule and the `max_clients` draw (applied to the roles that
    have a conversation) are those of `load_shakespeare`; each client's conversations are
    split into train/test with `client_rng(seed, client_id)`. A conversation's source is
    "shakespeare:{client_id}#{k}", k its index among the role's conversations in play order.
    """
    _check_arguments(min_lines, max_clients)
    _check_line_counts(cue_lines, reply_lines)
    check_test_fraction(test_fraction)
    check_seed(seed)
    directory, plays = _load_plays(plays_dir)
    turns = _turns(plays, set(_role_samples(plays, min_lines)))
    if not turns:
        raise ValueError(
            f"min_lines={min_lines}: no speaker in {directory} with that many lines answers another"
        )
    clients = []
    for cid in _choose(sorted(turns), max_clients, seed):
        samples = _conversations(cid, turns[cid], cue_lines=cue_lines, reply_lines=reply_lines)
        clients.append(make_client(cid, samples, test_fraction=test_fraction, seed=seed))
    return FederatedDataset(name="shakespeare-dialogue", clients=tuple(clients))
