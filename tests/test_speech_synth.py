"""The festival corpus generator: segment conversion, phone mapping, and a real 3-voice run."""
import shutil

import numpy as np
import pytest
import soundfile

from mlpfast.data import speech, synth

HAVE_FESTIVAL = shutil.which("festival") is not None and synth.LEXICON.exists()


def test_phone_set_is_cmu_plus_ax_and_sil():
    assert len(synth.PHONES) == 41 and len(set(synth.PHONES)) == 41
    assert {"ax", "sil", "aa", "zh", "ng"} <= set(synth.PHONES)
    assert synth.fold_phone("pau", "kal") == "sil"
    assert synth.fold_phone("axr", "kal") == "er"
    assert synth.fold_phone("dh", "kal") == "dh"
    with pytest.raises(ValueError, match="voice 'kal' produced phone 'qq', which has no mapping"):
        synth.fold_phone("qq", "kal")


def test_parse_segs_and_segments_from_ends():
    text = "separator ;\nnfields 1\n#\n0.2200 100 pau\n0.2569 100 dh\n0.2569 100 ax\n0.40 100 pau\n"
    ends = synth.parse_segs(text)
    assert ends == [(0.22, "pau"), (0.2569, "dh"), (0.2569, "ax"), (0.4, "pau")]
    segments = synth.segments_from_ends(ends, num_samples=6000, sample_rate=16000, voice="kal")
    assert segments == [(0, 3520, "sil"), (3520, 4110, "dh"), (4110, 6000, "sil")]
    with pytest.raises(ValueError, match="no '#' header line"):
        synth.parse_segs("0.1 100 pau\n")


def test_missing_festival_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"festival is not installed.*\n.*apt-get install "
                                           r"festival festvox-kallpc16k"):
        synth.synth_speech(tmp_path, ["kal"], 1)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"voices must be among \['kal', 'ked', 'slt'\]"):
        synth.synth_speech(tmp_path, ["kal", "bob"], 1)
    with pytest.raises(ValueError, match="utterances must be a positive integer, got 0"):
        synth.synth_speech(tmp_path, ["kal"], 0)


@pytest.mark.skipif(not HAVE_FESTIVAL, reason="festival not installed "
                                              f"({synth.INSTALL_HINT})")
def test_generates_a_small_corpus_that_speech_frames_reads(tmp_path):
    files = synth.synth_speech(tmp_path, ["kal", "ked", "slt"], utterances=1, seed=3)
    assert [f.name for f in files] == ["kal_0000.flac", "ked_0000.flac", "slt_0000.flac"]
    assert speech.read_phone_list(tmp_path / "phones.txt") == list(synth.PHONES)
    for path in files:
        info = soundfile.info(str(path))
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
        segments = speech.read_phn(path.with_suffix(".PHN"), num_samples=info.frames)
        assert segments[0].start == 0 and segments[0].phone == "sil"
        assert all(a.end == b.start for a, b in zip(segments, segments[1:]))
        assert {s.phone for s in segments} <= set(synth.PHONES)
        assert segments[-1].end > 0.8 * info.frames    # alignment spans the audio
        words = path.with_suffix(".txt").read_text().split()
        assert 5 <= len(words) <= 12
    again = synth.synth_speech(tmp_path / "again", ["kal"], utterances=1, seed=3)
    assert again[0].with_suffix(".txt").read_text() == files[0].with_suffix(".txt").read_text()
    data = speech.SpeechFrames(files, context=2, phones=synth.PHONES)
    assert data.num_utterances == 3 and len(data) > 100
    assert np.isfinite(data.features).all()


def test_fold_is_the_documented_39_phone_reduction():
    """The module docstring's table: pau -> sil, axr->er, ix->ih, dx->t, el->l, em->m, en->n,
    nx->n; every CMU phone, ax and sil map to themselves."""
    documented = {"pau": "sil", "axr": "er", "ix": "ih", "dx": "t", "el": "l", "em": "m",
                  "en": "n", "nx": "n"}
    for phone, folded in documented.items():
        assert synth.fold_phone(phone, "kal") == folded, phone
    for phone in synth.CMU_PHONES + ["ax", "sil"]:
        assert synth.fold_phone(phone, "kal") == phone
