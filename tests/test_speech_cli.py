"""`mlpfast train speech` and `mlpfast data synth-speech` end to end on tiny corpora."""
import pytest
from test_cli import refused
from test_speech import write_utterance

from mlpfast import cli
from mlpfast.data import speech


@pytest.fixture
def corpus(tmp_path, rng):
    for speaker in ("spk1", "spk2"):
        (tmp_path / speaker).mkdir()
        for i in range(3):
            write_utterance(tmp_path / speaker, f"u{i}", ["sil", "aa", "b", "iy", "sil"], rng)
    (tmp_path / "new").mkdir()
    write_utterance(tmp_path / "new", "v0", ["sil", "b", "aa"], rng)
    (tmp_path / "phones.txt").write_text("aa\nb\niy\nsil\nzh\n")
    return tmp_path


def test_train_speech_reports_held_out_test_and_confusions(corpus, capsys):
    rc = cli.main(["train", "speech", str(corpus / "spk1"), str(corpus / "spk2"),
                   "--context", "2", "--hidden", "16", "--epochs", "2", "--holdout", "0.34",
                   "--test", str(corpus / "new"), "--vtln", "--backend", "numpy",
                   "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "5 phones" in out                              # phones.txt of the corpus root
    assert "held-out utterances: frame accuracy" in out
    assert "of 2 utterances" in out and "of 1 utterances" in out
    assert "per-phone accuracy (frames): aa " in out
    assert "most confused (true -> predicted: frames)" in out
    assert "audio s per wall s" in out and "frames/s (median over epochs)" in out
    assert "VTLN new: warp " in out and " chosen by mean confidence (0.80:" in out
    assert "test with VTLN: frame accuracy" in out


def test_train_speech_on_precomputed_features(corpus, tmp_path, capsys):
    data = speech.SpeechFrames(speech.find_audio([corpus / "spk1"]), context=0)
    speech.save_feature_folder(data, tmp_path / "feats")
    rc = cli.main(["train", "speech", str(tmp_path / "feats"), "--context", "1", "--hidden", "8",
                   "--epochs", "1", "--holdout", "0.34", "--backend", "numpy", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "2 utterances), " in out and "held-out utterances: frame accuracy" in out


def test_train_speech_tests_on_a_precomputed_folder(corpus, tmp_path, capsys):
    for name, speaker, n_mfcc in (("feats", "spk1", 28), ("test", "spk2", 28),
                                  ("test13", "spk2", 13)):
        data = speech.SpeechFrames(speech.find_audio([corpus / speaker]), context=0,
                                   n_mfcc=n_mfcc)
        speech.save_feature_folder(data, tmp_path / name)
    common = ["train", "speech", "--context", "1", "--hidden", "8", "--epochs", "1",
              "--holdout", "0", "--backend", "numpy", "--no-progress"]
    assert cli.main(common + [str(tmp_path / "feats"), "--test", str(tmp_path / "test")]) == 0
    out = capsys.readouterr().out
    assert f"test ({tmp_path / 'test'}): frame accuracy " in out and "of 3 utterances" in out
    assert cli.main(common + [str(corpus / "spk1"), "--test", str(tmp_path / "test13")]) == 1
    out, err = capsys.readouterr()                      # refused before training
    assert f"--test {tmp_path / 'test13'}: 13 features per frame, the training set has 28" \
        in err and "frames/s" not in out
    (tmp_path / "empty").mkdir()
    assert cli.main(common + [str(corpus / "spk1"), "--test", str(tmp_path / "empty")]) == 1
    assert f"--test: no .flac or .wav files under ['{tmp_path / 'empty'}']" in \
        capsys.readouterr().err


def test_train_speech_refuses_options_that_cannot_apply(corpus, tmp_path, capsys):
    data = speech.SpeechFrames(speech.find_audio([corpus / "spk1"]), context=0)
    speech.save_feature_folder(data, tmp_path / "feats")
    feats, audio = str(tmp_path / "feats"), str(corpus / "new")
    err = refused(["train", "speech", feats, "--deltas", "2", "--n-mfcc", "13",
                   "--train-warps", "0.9,1.1"], capsys)
    assert f"--n-mfcc, --deltas, --train-warps cannot apply: {feats} holds precomputed " \
           f"features" in err
    err = refused(["train", "speech", feats, "--test", audio, "--n-mfcc", "28",
                   "--train-warps", "1.0"], capsys)
    assert "error: --train-warps cannot apply" in err      # --n-mfcc does: the test audio
    err = refused(["train", "speech", str(corpus / "spk1"), "--vtln"], capsys)
    assert "--vtln needs --test DIR" in err
    err = refused(["train", "speech", audio, "--test", feats, "--vtln"], capsys)
    assert f"--vtln needs --test audio folders: {feats} holds precomputed features" in err
    err = refused(["train", "speech", audio, "--test", feats, audio], capsys)
    assert "--test takes one folder of precomputed features" in err
    err = refused(["train", "speech", audio, "--holdout", "0", "--early-stopping", "2"], capsys)
    assert "--early-stopping needs a validation set: --holdout 0 holds out no utterances" in err


def test_train_speech_with_training_warps(corpus, capsys):
    rc = cli.main(["train", "speech", str(corpus / "spk1"), "--context", "1", "--hidden", "8",
                   "--epochs", "1", "--holdout", "0.34", "--train-warps", "0.9,1.1",
                   "--backend", "numpy", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "(4 utterances), " in out                     # 2 training files x 2 warps
    with pytest.raises(SystemExit):
        cli.main(["train", "speech", str(corpus), "--train-warps", "0.9,3"])
    assert "warp factors must lie in [0.5, 2], got '0.9,3'" in capsys.readouterr().err


def test_train_speech_errors_are_reported(tmp_path, capsys):
    rc = cli.main(["train", "speech", str(tmp_path), "--backend", "numpy"])
    assert rc == 1
    assert "no .flac or .wav files under" in capsys.readouterr().err


def test_synth_speech_without_festival_says_how_to_install(monkeypatch, tmp_path, capsys):
    from mlpfast.data import synth
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    assert cli.main(["data", "synth-speech", str(tmp_path), "--utterances", "1"]) == 1
    assert "apt-get install festival" in capsys.readouterr().err


def test_feature_options_reach_the_frames(corpus, capsys):
    """--n-mfcc 13 --deltas 1 --context 1: 13 coefficients and their deltas per frame (26),
    times the 3 frames of the context window: 78 inputs. The held-out split follows --seed."""
    common = ["train", "speech", str(corpus / "spk1"), str(corpus / "spk2"), "--hidden", "8",
              "--epochs", "1", "--holdout", "0.34", "--backend", "numpy", "--no-progress"]
    assert cli.main(common + ["--n-mfcc", "13", "--deltas", "1", "--context", "1"]) == 0
    out = capsys.readouterr().out
    assert "context +-1 of 26 features = 78 inputs" in out, out
    assert "MLP 78-8-5 " in out
    held = {}
    for seed in range(4):
        assert cli.main(common + ["--context", "0", "--seed", str(seed)]) == 0
        out = capsys.readouterr().out
        held[seed] = out.split("held-out utterances: frame accuracy")[1].split("\n")[0]
    expected = {seed: speech.split_by_utterance(speech.find_audio([corpus / "spk1",
                                                                   corpus / "spk2"]),
                                                0.34, seed)[1] for seed in range(4)}
    assert len({tuple(files) for files in expected.values()}) > 1     # the seeds differ ...
    frames = {seed: held[seed].split(" on ")[1].split(" frames")[0] for seed in held}
    for a in range(4):                                # ... and so do the held-out frames
        for b in range(4):
            if expected[a] == expected[b]:
                assert frames[a] == frames[b]
    assert len(set(frames.values())) > 1, frames


def test_synth_speech_options_reach_the_synthesizer(monkeypatch, tmp_path, capsys):
    from mlpfast.data import synth
    calls = []
    monkeypatch.setattr(synth, "synth_speech", lambda *args, **kwargs: calls.append(
        (args, kwargs)) or [])
    assert cli.main(["data", "synth-speech", str(tmp_path), "--voices", "ked,slt",
                     "--utterances", "4", "--seed", "9", "--jobs", "3"]) == 0
    assert cli.main(["data", "synth-speech", str(tmp_path)]) == 0         # the defaults
    assert calls == [((str(tmp_path), ["ked", "slt"], 4), {"seed": 9, "jobs": 3}),
                     ((str(tmp_path), ["kal", "ked", "slt"], 150), {"seed": 0, "jobs": 2})]
    assert "wrote 0 utterances (ked, slt) under " in capsys.readouterr().out


def test_train_warps_lie_in_half_to_double():
    """--train-warps: comma-separated factors in [0.5, 2], the ends included."""
    import argparse
    assert cli._warp_list("0.5,1.0,2.0") == [0.5, 1.0, 2.0]
    assert cli._warp_list(" 0.9 , 1.1,") == [0.9, 1.1]
    for text in ("0.49", "2.01", "1.0,2.5", "", "0.9,x"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli._warp_list(text)
