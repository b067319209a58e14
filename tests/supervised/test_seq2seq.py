"""Sequence to sequence: the date task's data, the models' masks, decoding, the pairing
errors, and one trained run checked several ways (metrics per format group, attention heat
maps, a table of translations, `trainyard translate`)."""

from __future__ import annotations

import datetime as dt

import pytest
import torch

from conftest import runs_of, write
from trainyard.cli import main
from trainyard.supervised.dates import FORMATS
from trainyard.supervised.formats import DataError
from trainyard.supervised.seq2seq import (
    GRUSeq2Seq,
    TransformerSeq2Seq,
    beam_search,
    edit_distance,
    greedy,
)
from trainyard.supervised.seq2seq_data import BOS, EOS, Vocab, date_pairs, read_parallel


def test_every_date_format_writes_the_same_day_and_held_out_dates_are_unseen():
    day = dt.date(1998, 3, 3)
    written = {name: f(day) for name, f in FORMATS.items()}
    assert written["ordinal"] == "3rd of March 1998" and written["dmy_slash"] == "03/03/98"
    assert written["long"] == "March 3, 1998" and written["dotted"] == "1998.3.3"
    assert written["weekday"] == "Tuesday, March 3, 1998"
    splits, groups = date_pairs(0, 2000, ["abbrev_us"], 0.1, 0.1)
    train_days = {t for _, t in splits["train"]}
    assert not train_days & {t for _, t in splits["test"]}
    assert not train_days & {t for _, t in splits["val"]}
    unseen = [s for (s, _), g in zip(splits["test"], groups, strict=True) if g == 1]
    assert unseen and all(s[:3].isalpha() and "," in s for s in unseen)  # "Mar 3, 1998"
    assert not any(g for g in groups[:len(groups) // 2])


def test_the_vocabulary_round_trips_and_the_edit_distance_counts_edits():
    vocab = Vocab.build(["1998-03-03", "abc"])
    assert vocab.decode(vocab.encode("1998-03-03")) == "1998-03-03"
    assert edit_distance("1998-03-03", "1998-30-03") == 2 and edit_distance("", "ab") == 2


def test_source_padding_and_future_targets_do_not_change_the_transformers_output():
    torch.manual_seed(0)
    model = TransformerSeq2Seq(20, 15, 32, 4, 2, 2, 0.0).eval()
    src = torch.randint(3, 20, (1, 6))
    padded = torch.cat([src, torch.zeros(1, 4, dtype=torch.long)], 1)
    tgt = torch.cat([torch.tensor([[BOS]]), torch.randint(3, 15, (1, 5))], 1)
    with torch.no_grad():
        a, b = model(src, tgt), model(padded, tgt)
        changed = tgt.clone()
        changed[0, -1] = 3 if tgt[0, -1] != 3 else 4
        c = model(src, changed)
    assert torch.allclose(a, b, atol=1e-5)  # padding is masked in encoder and cross-attention
    assert torch.allclose(a[:, :-1], c[:, :-1], atol=1e-5)  # causal: no peeking ahead


@pytest.mark.parametrize("model", [GRUSeq2Seq(12, 9, 8, 16, True, 0.0),
                                   TransformerSeq2Seq(12, 9, 16, 2, 1, 2, 0.0)])
def test_a_beam_of_one_is_greedy_decoding(model):
    torch.manual_seed(1)
    src = torch.randint(3, 12, (3, 5))
    ids, _ = greedy(model, src, 8)
    for row in range(3):
        tokens = ids[row].tolist()
        cut = tokens[:tokens.index(EOS)] if EOS in tokens else tokens
        assert beam_search(model, src[row:row + 1], 1, 8, length_penalty=0.0) == cut


def test_parallel_text_lines_are_checked_with_their_line_numbers(tmp_path):
    path = write(tmp_path / "pairs.tsv", "a\tb\n" * 12 + "no tab here\n")
    with pytest.raises(DataError, match=r"pairs.tsv:13: expected source<TAB>target"):
        read_parallel(str(path))


@pytest.mark.parametrize("data,arch,expected", [
    ("digits", "seq2seq_gru", "attention over images is not supported"),
    ("dates", "resnet", "data.name 'dates' is source/target pairs; model.arch resnet cannot "
                        "produce a sequence"),
])
def test_a_model_and_data_that_do_not_pair_are_one_line_at_the_model(workdir, capsys, data,
                                                                      arch, expected):
    job = write(workdir / "s.yaml", f"name: s\nkind: supervised\ndata: {{name: {data}}}\n"
                                    f"model: {{arch: {arch}}}\n")
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err
    assert "s.yaml" in err and expected in err


@pytest.mark.slow
def test_a_gru_with_attention_learns_dates_and_translates_them(workdir, ray_once, capsys):
    from conftest import REPO

    job = REPO / "supervised" / "configs" / "seq2seq_dates.yaml"
    assert main(["run", str(job), "-o", "stop.epochs=2", "-o", "data.train_size=12000",
                 "-o", "tracking.system_metrics=false"]) == 0
    client, [run] = runs_of(f"sqlite:///{workdir / 'trainyard-runs' / 'mlflow.db'}",
                            "seq2seq")
    metrics, run_id = run.data.metrics, run.info.run_id
    assert metrics["test/seen_formats/exact_match"] >= 0.95, metrics
    assert metrics["test/seen_formats/cer"] < 0.02
    assert 0.0 <= metrics["test/unseen_formats/exact_match"] <= 1.0
    assert metrics["test/bleu"] > 80 and run.data.tags["trainyard.headline"] == \
        "val/exact_match"
    images = {a.path.split("/")[-1].split("+")[0]
              for a in client.list_artifacts(run_id, "images")}
    assert {"attention_0", "attention_3"} <= images, images
    table = client.download_artifacts(run_id, "translations.md", str(workdir))
    assert "| unseen formats |" in open(table).read()
    capsys.readouterr()
    assert main(["translate", run_id, "14th of July 1989"]) == 0
    assert capsys.readouterr().out.strip() == "1989-07-14"
    assert main(["translate", run_id, "July 14, 1989", "--beam", "3"]) == 0
    assert capsys.readouterr().out.strip() == "1989-07-14"


def test_init_from_carries_the_encoder_over_to_a_new_target_vocabulary():
    from trainyard.supervised.finetune import apply_init
    from trainyard.supervised.seq2seq_task import Seq2SeqTask
    from trainyard.supervised.spec import InitFrom

    trained, fresh = GRUSeq2Seq(12, 9, 8, 16, True), GRUSeq2Seq(12, 30, 8, 16, True)
    trainable = apply_init(fresh, trained.state_dict(), InitFrom(source="x", new_head=True),
                           Seq2SeqTask.backbone)
    assert torch.equal(fresh.encoder.weight_hh_l0, trained.encoder.weight_hh_l0)
    assert fresh.out.weight.shape == (30, 16 + 32 + 8)  # the decoder keeps its own vocabulary
    assert "out.weight" in trainable
