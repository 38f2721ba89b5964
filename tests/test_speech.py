"""Speech data: audio reading, .PHN parsing, frame labels, SpeechFrames, precomputed layout."""
import numpy as np
import pytest
import soundfile

import mlpfast as mf
from mlpfast.data import speech
from mlpfast.kernels import context as context_kernels
from mlpfast.kernels import features as feature_kernels

# --- .PHN parsing ---------------------------------------------------------------------


def test_parse_phn_reads_segments_and_allows_gaps():
    text = "0 100 h#\n\n100 250 ae\n300 400 t\n"
    assert speech.parse_phn(text, num_samples=400) == [
        (0, 100, "h#"), (100, 250, "ae"), (300, 400, "t")]


@pytest.mark.parametrize("text,message", [
    ("0 100\n", r"x.PHN:1: expected 'start_sample end_sample phone', got '0 100'"),
    ("0 100 a\n100 200 b extra\n", r"x.PHN:2: expected 'start_sample end_sample phone'"),
    ("0 1.5e2 a\n", r"x.PHN:1: start and end must be integer sample indices"),
    ("0 100 a\n100 100 b\n", r"x.PHN:2: need 0 <= start < end, got start=100 end=100"),
    ("-5 100 a\n", r"x.PHN:1: need 0 <= start < end"),
    ("0 100 a\n\n90 200 b\n", r"x.PHN:3: segment 90-200 starts before the segment on line 1 "
                              r"ends \(100\): overlapping or out of order"),
    ("100 200 a\n0 50 b\n", r"x.PHN:2: .*overlapping or out of order"),
    ("0 100 a\n100 501 b\n", r"x.PHN:2: segment ends at sample 501, past the end of the audio "
                             r"\(500 samples\)"),
    ("\n  \n", r"x.PHN: no segments"),
])
def test_parse_phn_errors_name_file_and_line(text, message):
    with pytest.raises(ValueError, match=message):
        speech.parse_phn(text, num_samples=500, source="x.PHN")


def test_frame_phones_takes_the_segment_holding_the_centre():
    segments = [speech.Segment(0, 300, "a"), speech.Segment(300, 500, "b"),
                speech.Segment(700, 900, "c")]
    centres = np.array([0, 299, 300, 499, 500, 699, 700, 899, 900, 5000])
    assert speech.frame_phones(segments, centres).tolist() == [
        "a", "a", "b", "b", "", "", "c", "c", "", ""]
    late = [speech.Segment(250, 300, "x")]
    assert speech.frame_phones(late, np.array([200, 250])).tolist() == ["", "x"]


# --- a tiny corpus on disk --------------------------------------------------------------

def write_utterance(folder, name, phones, rng, sample_rate=16000, suffix=".wav", channels=1):
    """Phones of 0.1-0.2 s each, each a tone of its own pitch plus noise; returns the path."""
    segments, parts, start = [], [], 0
    for phone in phones:
        length = int(rng.integers(sample_rate // 10, sample_rate // 5))
        pitch = 200.0 + 150.0 * (sum(map(ord, phone)) % 20)
        t = np.arange(length) / sample_rate
        parts.append(0.3 * np.sin(2 * np.pi * pitch * t) + 0.01 * rng.standard_normal(length))
        segments.append(speech.Segment(start, start + length, phone))
        start += length
    audio = np.concatenate(parts)
    if channels > 1:
        audio = np.stack([audio] * channels, axis=1)
    path = folder / f"{name}{suffix}"
    soundfile.write(str(path), audio, sample_rate, subtype="PCM_16")
    speech.write_phn(path.with_suffix(".PHN"), segments)
    return path


@pytest.fixture
def corpus(tmp_path, rng):
    (tmp_path / "spk1").mkdir()
    (tmp_path / "spk2").mkdir()
    return [write_utterance(tmp_path / "spk1", "u0", ["sil", "aa", "b", "sil"], rng),
            write_utterance(tmp_path / "spk1", "u1", ["b", "iy"], rng, suffix=".flac"),
            write_utterance(tmp_path / "spk2", "u2", ["sil", "iy", "aa"], rng)]


def test_read_audio_wav_flac_and_stereo(tmp_path, rng):
    wav = write_utterance(tmp_path, "a", ["aa"], rng, suffix=".wav")
    flac = write_utterance(tmp_path, "b", ["aa"], rng, suffix=".flac", channels=2)
    signal, rate = speech.read_audio(wav)
    assert signal.dtype == np.float32 and signal.ndim == 1 and rate == 16000
    stereo, _ = speech.read_audio(flac)
    left = soundfile.read(str(flac), dtype="float32")[0][:, 0]
    np.testing.assert_array_equal(stereo, left)           # equal channels average to either
    with pytest.raises(ValueError, match=r"audio file must end in one of \('.flac', '.wav'\)"):
        speech.read_audio(tmp_path / "a.mp3")


def test_speech_frames_matches_reference_construction(corpus):
    data = speech.SpeechFrames(corpus, context=3, n_mfcc=13, variant="numba")
    assert data.phones == ("aa", "b", "iy", "sil")
    assert data.num_classes == 4 and data.feature_dim == 13 and data.num_features == 7 * 13
    feats, labels = [], []
    for path in corpus:                                   # rebuilt with the NumPy references
        signal, rate = speech.read_audio(path)
        spec = feature_kernels.make_spec(rate, n_mfcc=13)
        f = feature_kernels.cmvn_ref(feature_kernels.mfcc_ref(signal.astype(np.float64), spec))
        feats.append(f)
        labels.append(speech.frame_phones(speech.read_phn(path.with_suffix(".PHN")),
                                          spec.frame_centers(f.shape[0])))
    all_labels = np.concatenate(labels)
    labeled = np.flatnonzero(all_labels != "")
    assert len(data) == labeled.size
    offsets = np.concatenate([[0], np.cumsum([f.shape[0] for f in feats])])
    index = np.array([0, len(data) - 1, 5, 17, 5], dtype=np.int64)
    x = np.empty((5, data.num_features), np.float32)
    y = np.empty(5, np.int64)
    data.gather_batch(index, x, y)
    expected = context_kernels.context_gather_ref(np.concatenate(feats), offsets,
                                                  labeled[index], 3)
    np.testing.assert_allclose(x, expected, atol=2e-4, rtol=1e-4)
    assert [data.phones[i] for i in y] == all_labels[labeled[index]].tolist()


def test_speech_frames_shared_phone_set_and_unknown_phones(corpus, tmp_path, rng):
    train = speech.SpeechFrames(corpus[:2], context=1)
    test = speech.SpeechFrames(corpus[2:], context=1, phones=train.phones)
    assert test.phones == train.phones
    odd = write_utterance(tmp_path, "odd", ["zh"], rng)
    with pytest.raises(ValueError, match=r"odd.wav: phones \['zh'\] are not in the phone set"):
        speech.SpeechFrames([odd], phones=train.phones)


def test_speech_frames_at_another_rate_uses_that_rates_windows(tmp_path, rng):
    path = write_utterance(tmp_path, "slow", ["aa", "b"], rng, sample_rate=8000)
    data = speech.SpeechFrames([path], context=0)
    signal, _ = speech.read_audio(path)
    assert data.features.shape[0] == 1 + (signal.shape[0] - 200) // 80


def test_speech_frames_bad_arguments(corpus, tmp_path):
    with pytest.raises(TypeError, match="files must be a list of audio paths"):
        speech.SpeechFrames(str(corpus[0]))
    with pytest.raises(ValueError, match="context must be a non-negative integer"):
        speech.SpeechFrames(corpus, context=-1)
    with pytest.raises(ValueError, match="phones must be distinct"):
        speech.SpeechFrames(corpus, phones=["aa", "aa", "b", "iy", "sil"])
    lonely = tmp_path / "lonely.wav"
    soundfile.write(str(lonely), np.zeros(800), 16000)
    with pytest.raises(FileNotFoundError, match="no alignment for .*lonely.wav"):
        speech.SpeechFrames([lonely])
    data = speech.SpeechFrames(corpus, context=1, n_mfcc=13)
    with pytest.raises(ValueError, match=r"x_out and y_out must have shapes \(2, 39\)"):
        data.gather_batch(np.array([0, 1]), np.empty((2, 38), np.float32), np.empty(2, np.int64))
    with pytest.raises(ValueError, match=r"index must lie in \[0, "):
        data.gather_batch(np.array([len(data)]), np.empty((1, 39), np.float32),
                          np.empty(1, np.int64))


def test_audio_without_labeled_frames_is_refused_saying_why(tmp_path):
    # 300 samples at 16 kHz: shorter than one 400-sample window, so no frames. Without a
    # phone list this said "phones must be distinct non-empty names, got ()"; with one it
    # built an empty dataset that fit refused as "dataset x is empty"
    short = tmp_path / "short.wav"
    soundfile.write(str(short), np.zeros(300), 16000)
    speech.write_phn(short.with_suffix(".PHN"), [speech.Segment(0, 300, "aa")])
    message = (r"no labeled frames in .*short.wav and 1 more: a sample is a frame whose centre "
               r"sample lies in a .PHN segment; 2 of them have no frames at all \(audio "
               r"shorter than one analysis window\), e.g. .*short.wav")
    for phones in (None, ["aa"]):
        with pytest.raises(ValueError, match=message):
            speech.SpeechFrames([short, short], phones=phones)
    with pytest.raises(ValueError, match=r"no labeled frames in utterance 0: a sample is a "
                                         r"frame whose centre sample lies in a .PHN segment$"):
        speech.SpeechFrames.from_arrays([np.zeros((4, 3))], [np.array([""] * 4)],
                                        phones=["a"])


def test_feature_folder_round_trip(corpus, tmp_path):
    data = speech.SpeechFrames(corpus, context=2, n_mfcc=13)
    speech.save_feature_folder(data, tmp_path / "feats")
    assert sorted(p.name for p in (tmp_path / "feats" / "mfcc").iterdir()) == \
        ["0.npy", "1.npy", "2.npy"]
    again = speech.SpeechFrames.from_folder(tmp_path / "feats", context=2, normalize=False)
    assert again.phones == data.phones and len(again) == len(data)
    index = np.arange(len(data), dtype=np.int64)
    x1, x2 = (np.empty((len(data), data.num_features), np.float32) for _ in range(2))
    y1, y2 = np.empty(len(data), np.int64), np.empty(len(data), np.int64)
    data.gather_batch(index, x1, y1)
    again.gather_batch(index, x2, y2)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_a_float64_batch_holds_the_float32_frames_and_a_float64_model_trains(rng):
    feats = [rng.standard_normal((30, 4)).astype(np.float32) for _ in range(3)]
    data = speech.SpeechFrames.from_arrays(feats, [np.array(list("ab") * 15)] * 3, context=1)
    index = rng.permutation(len(data))[:17]
    x32, x64, y = np.empty((17, 12), np.float32), np.empty((17, 12)), np.empty(17, np.int64)
    data.gather_batch(index, x32, y)
    data.gather_batch(index, x64, y)
    np.testing.assert_array_equal(x64, x32)
    model = mf.MLP([12, 5, 2], backend="numpy", dtype=np.float64, seed=0)
    history = mf.fit(model, mf.optim.SGD(model.parameters(), lr=0.1), mf.CrossEntropyLoss(),
                     data, epochs=2, batch_size=16, seed=0, progress=False)
    assert np.isfinite(history["loss"]).all()


def test_from_arrays_integer_labels_and_errors(rng):
    feats = [rng.standard_normal((4, 3)), rng.standard_normal((2, 3))]
    data = speech.SpeechFrames.from_arrays(feats, [np.array([0, 1, -1, 1]), np.array([2, 0])],
                                           context=1, phones=["a", "b", "c"])
    assert len(data) == 5 and data.labels.tolist() == [0, 1, 1, 2, 0]
    with pytest.raises(ValueError, match="integer labels need the phone list"):
        speech.SpeechFrames.from_arrays(feats, [np.array([0, 1, 0, 1]), np.array([0, 0])])
    with pytest.raises(ValueError, match=r"integer labels must lie in \[-1, 2\)"):
        speech.SpeechFrames.from_arrays(feats, [np.array([0, 1, 0, 2]), np.array([0, 0])],
                                        phones=["a", "b"])
    with pytest.raises(ValueError, match=r"need one label per frame \(2\)"):
        speech.SpeechFrames.from_arrays(feats, [np.array(["a"] * 4), np.array(["a"])])
    with pytest.raises(ValueError, match="utterance 1: features contain NaN or inf"):
        speech.SpeechFrames.from_arrays([feats[0], np.full((2, 3), np.nan)],
                                        [np.array(["a"] * 4), np.array(["a"] * 2)])
    kept = feats[0].astype(np.float32)
    speech.SpeechFrames.from_arrays([kept], [np.array(["a"] * 4)], normalize=True)
    np.testing.assert_array_equal(kept, feats[0].astype(np.float32))   # input left alone
    with pytest.raises(ValueError, match="same feature count"):
        speech.SpeechFrames.from_arrays([feats[0], np.zeros((2, 4))],
                                        [np.array(["a"] * 4), np.array(["a"] * 2)])
    labels = [np.array(["a"] * 4), np.array(["a"] * 2)]
    for names, got in ((["one"], "1 names"), (["a", "b", "c"], "3 names"), ("ab", "a string")):
        with pytest.raises(ValueError, match=rf"names must list one name per utterance \(2\), "
                                             rf"got {got}"):
            speech.SpeechFrames.from_arrays(feats, labels, names=names)
    with pytest.raises(ValueError, match="phones must be a list of phone names, got the string"):
        speech.SpeechFrames.from_arrays(feats, labels, phones="ab")


def test_split_by_utterance_holds_out_per_folder(corpus):
    train, held = speech.split_by_utterance(corpus, 0.5, seed=1)
    assert sorted(train + held) == sorted(corpus)
    assert {p.parent.name for p in held} == {"spk1"}      # spk2's single file stays in train
    with pytest.raises(ValueError, match=r"holdout must lie in \(0, 1\), got 1.0"):
        speech.split_by_utterance(corpus, 1.0)


def test_fit_and_evaluate_accept_speech_frames(corpus):
    data = speech.SpeechFrames(corpus, context=2, n_mfcc=13)
    model = mf.MLP([data.num_features, 32, data.num_classes], backend="numpy", seed=0)
    optimizer = mf.optim.Adam(model.parameters(), lr=3e-3)
    history = mf.fit(model, optimizer, mf.CrossEntropyLoss(), data, epochs=15, batch_size=32,
                     seed=0, progress=False)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    result = mf.evaluate(model, data)
    assert result["n"] == len(data) and result["accuracy"] > 0.9
    assert result["confusion_matrix"].sum() == len(data)


def test_speech_frames_warps_read_each_utterance_once_per_warp(corpus):
    plain = speech.SpeechFrames(corpus, context=1, n_mfcc=13)
    warped = speech.SpeechFrames(corpus, context=1, n_mfcc=13, warp=1.1)
    both = speech.SpeechFrames(corpus, context=1, n_mfcc=13, warp=[1.0, 1.1])
    assert len(both) == 2 * len(plain) and both.num_utterances == 6
    assert both.names[:2] == [f"{corpus[0]} (warp 1)", f"{corpus[0]} (warp 1.1)"]
    first = slice(0, int(plain.offsets[1]))
    np.testing.assert_array_equal(both.features[first], plain.features[first])
    second = slice(int(both.offsets[1]), int(both.offsets[2]))
    np.testing.assert_array_equal(both.features[second], warped.features[first])
    assert not np.allclose(warped.features, plain.features, atol=1e-2)


# --- mutation-testing gaps: contracts no test above reached ------------------------------

def test_read_audio_averages_different_channels(tmp_path, rng):
    audio = np.stack([0.5 * np.sin(np.arange(3000) / 7.0),
                      0.3 * rng.standard_normal(3000)], axis=1)
    path = tmp_path / "two.wav"
    soundfile.write(str(path), audio, 16000, subtype="FLOAT")
    signal, rate = speech.read_audio(path)
    channels = soundfile.read(str(path), dtype="float32")[0].astype(np.float64)
    assert rate == 16000 and signal.shape == (3000,)
    np.testing.assert_allclose(signal, channels.mean(axis=1), rtol=0, atol=1e-7)


@pytest.mark.parametrize("kind", ["mfcc", "log_mel"])
def test_utterance_features_deltas_then_cmvn_follow_the_references(kind, rng):
    """F blocks [c, d(c), d(d(c))] (delta-deltas are deltas of the deltas), then CMVN over
    every column, built here from the NumPy references."""
    spec = feature_kernels.make_spec(16000, n_mfcc=13)
    signal = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    c = getattr(feature_kernels, f"{kind}_ref")(signal.astype(np.float64), spec)
    d = feature_kernels.deltas_ref(c)
    dd = feature_kernels.deltas_ref(d)
    for deltas, blocks in ((1, [c, d]), (2, [c, d, dd])):
        raw = speech.utterance_features(signal, spec, kind, deltas=deltas, normalize=False)
        expected = np.concatenate(blocks, axis=1)
        np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        got = speech.utterance_features(signal, spec, kind, deltas=deltas)
        np.testing.assert_allclose(got, feature_kernels.cmvn_ref(expected), rtol=0, atol=2e-3)
        np.testing.assert_allclose(got.std(axis=0), 1.0, atol=1e-3)


def test_feature_folder_round_trip_keeps_unlabeled_frames_unlabeled(tmp_path, rng):
    feats = [rng.standard_normal((6, 3)).astype(np.float32) for _ in range(2)]
    labels = [np.array(["", "a", "b", "", "b", ""]), np.array(["a", "", "", "c", "c", ""])]
    data = speech.SpeechFrames.from_arrays(feats, labels, context=1)
    speech.save_feature_folder(data, tmp_path / "feats")
    written = np.load(tmp_path / "feats" / "transcript" / "0.npy")
    assert written.tolist() == labels[0].tolist()
    again = speech.SpeechFrames.from_folder(tmp_path / "feats", context=1, normalize=False)
    assert len(again) == len(data) == 6
    assert again.frame_labels.tolist() == data.frame_labels.tolist()


def test_from_folder_takes_the_phone_list_of_its_phones_txt(tmp_path, rng):
    feats = [rng.standard_normal((4, 3)).astype(np.float32)]
    data = speech.SpeechFrames.from_arrays(feats, [np.array(["b", "b", "a", "a"])], context=0)
    speech.save_feature_folder(data, tmp_path / "feats")
    (tmp_path / "feats" / "phones.txt").write_text("zh\nb\na\n")
    again = speech.SpeechFrames.from_folder(tmp_path / "feats", context=0)
    assert again.phones == ("zh", "b", "a") and again.num_classes == 3
    assert again.labels.tolist() == [1, 1, 2, 2]


def test_split_by_utterance_holds_out_at_least_one_file_of_a_folder(tmp_path):
    files = [tmp_path / "spk" / f"u{i}.wav" for i in range(2)]
    train, held = speech.split_by_utterance(files, 0.1, seed=0)
    assert len(held) == 1 and sorted(train + held) == sorted(files)


@pytest.mark.parametrize("files,holdout", [(2, 0.75), (2, 0.99), (3, 0.9), (4, 0.95)])
def test_split_by_utterance_keeps_every_speaker_in_training(tmp_path, files, holdout):
    # round(holdout * files) == files would hold out the whole folder: all but one instead
    paths = [tmp_path / "spk" / f"u{i}.wav" for i in range(files)]
    train, held = speech.split_by_utterance(paths, holdout, seed=0)
    assert len(train) == 1 and len(held) == files - 1
    assert sorted(train + held) == sorted(paths)


def test_negative_indices_and_labels_below_minus_one_are_refused(rng):
    feats = [rng.standard_normal((4, 3))]
    data = speech.SpeechFrames.from_arrays(feats, [np.array(["a", "b", "a", "b"])], context=0)
    with pytest.raises(ValueError, match=r"index must lie in \[0, 4\), got values in \[-1, 0\]"):
        data.gather_batch(np.array([0, -1]), np.empty((2, 3), np.float32),
                          np.empty(2, np.int64))
    with pytest.raises(ValueError, match=r"integer labels must lie in \[-1, 2\), got \[-2, 1\]"):
        speech.SpeechFrames.from_arrays(feats, [np.array([0, -2, 1, 0])], phones=["a", "b"])


def test_every_frame_takes_the_phone_at_its_centre_sample(tmp_path, rng):
    """The rule of the module docstring, applied here frame by frame: frame t is labeled by
    the segment [start, end) holding sample t*hop + L//2 (L = 400, hop = 160 at 16 kHz)."""
    path = write_utterance(tmp_path, "u", ["sil", "aa", "b", "iy", "aa", "sil"], rng)
    segments = speech.read_phn(path.with_suffix(".PHN"))
    data = speech.SpeechFrames([path], context=0)
    expected = []
    for t in range(data.features.shape[0]):
        centre = t * 160 + 200
        held = [s.phone for s in segments if s.start <= centre < s.end]
        expected.append(data.phones.index(held[0]) if held else -1)
    assert data.frame_labels.tolist() == expected


def test_fingerprint_tells_apart_labels_phones_and_context(rng):
    feats = [rng.standard_normal((5, 3)).astype(np.float32)]
    labels = np.array(["a", "a", "b", "b", "a"])
    base = speech.SpeechFrames.from_arrays(feats, [labels], context=1).fingerprint()
    assert speech.SpeechFrames.from_arrays(feats, [labels], context=1).fingerprint() == base
    others = [speech.SpeechFrames.from_arrays(feats, [labels[::-1].copy()], context=1),
              speech.SpeechFrames.from_arrays(feats, [labels], context=1, phones=["b", "a"]),
              speech.SpeechFrames.from_arrays(feats, [labels], context=2),
              speech.SpeechFrames.from_arrays([feats[0] + 1], [labels], context=1)]
    for other in others:
        assert other.fingerprint() != base


# --- the recipe's analysis (mlpfast.speech) ------------------------------------------------

def test_per_phone_accuracy_and_top_confusions_read_rows_as_the_true_phone():
    from mlpfast import speech as analysis
    confusion = np.array([[3, 1, 0], [2, 2, 0], [0, 4, 0]])      # rows: true, columns: predicted
    accuracy = analysis.per_phone_accuracy(confusion)
    np.testing.assert_array_equal(accuracy, [0.75, 0.5, 0.0])
    assert np.isnan(analysis.per_phone_accuracy(np.array([[1, 0], [0, 0]]))[1])
    assert analysis.top_confusions(confusion, ["a", "b", "c"], count=2) == [
        ("c", "b", 4), ("b", "a", 2)]
    assert analysis.top_confusions(np.diag([5, 6]), ["a", "b"]) == []


def test_estimate_warp_takes_the_most_confident_warp(monkeypatch):
    from mlpfast import speech as analysis

    class Frames:
        def __init__(self, files, phones, warp, **options):
            self.warp = warp

    def probabilities(model, data):              # confidence peaks at warp 1.1
        top = 0.9 - abs(data.warp - 1.1)
        return np.array([[top, 1 - top], [top, 1 - top]])

    monkeypatch.setattr(analysis, "SpeechFrames", Frames)
    monkeypatch.setattr(analysis, "predict_proba", probabilities)
    warp, confidence = analysis.estimate_warp(None, ["f.wav"], ["a", "b"])
    assert warp == 1.1 and sorted(confidence) == list(analysis.VTLN_WARPS)
    assert confidence[0.8] == pytest.approx(0.6) and confidence[1.4] == pytest.approx(0.6)


def test_find_audio_searches_subfolders_and_lowercase_phn_files_are_found(tmp_path, rng):
    nested = tmp_path / "corpus" / "spk1" / "session"
    nested.mkdir(parents=True)
    deep = write_utterance(nested, "u0", ["aa", "b"], rng, suffix=".flac")
    top = write_utterance(tmp_path / "corpus", "u1", ["b"], rng)
    (tmp_path / "corpus" / "notes.txt").write_text("not audio")
    assert speech.find_audio([tmp_path / "corpus"]) == sorted([deep, top])
    lower = top.with_suffix(".phn")
    top.with_suffix(".PHN").rename(lower)
    assert speech.phn_path(top) == lower
    assert len(speech.SpeechFrames([top], context=0)) > 0


# --- mutation-testing gaps (2): options that reach the features, splits, the folder order ---

def test_speech_frames_options_reach_the_features(tmp_path, rng):
    """features="log_mel", n_mels=26, normalize=False: the frames are the raw log-mel of the
    NumPy reference (T, 26) at the file's rate; audio_seconds = samples / rate."""
    path = write_utterance(tmp_path, "u", ["sil", "aa", "b"], rng)
    signal, rate = speech.read_audio(path)
    data = speech.SpeechFrames([path], context=0, n_mfcc=13, features="log_mel", n_mels=26,
                               normalize=False)
    spec = feature_kernels.make_spec(rate, n_mfcc=13, n_mels=26)
    expected = feature_kernels.log_mel_ref(signal.astype(np.float64), spec)
    assert data.feature_dim == 26 and data.features.shape == expected.shape
    np.testing.assert_allclose(data.features, expected, rtol=1e-5, atol=1e-4)
    assert data.audio_seconds == pytest.approx(signal.shape[0] / rate, rel=1e-12)
    normalized = speech.SpeechFrames([path], context=0, n_mfcc=13, features="log_mel",
                                     n_mels=26)
    np.testing.assert_allclose(normalized.features, feature_kernels.cmvn_ref(expected),
                               rtol=0, atol=2e-3)


def test_utterance_features_are_float32_for_a_float64_signal(rng):
    spec = feature_kernels.make_spec(16000, n_mfcc=13)
    signal = 0.1 * rng.standard_normal(4000)                  # float64
    for kind in ("mfcc", "log_mel"):
        assert speech.utterance_features(signal, spec, kind, deltas=1).dtype == np.float32


def test_split_by_utterance_rounds_the_fraction_and_ignores_the_listing_order(tmp_path):
    """3 files of one folder: holdout 0.6 -> round(1.8) = 2 held out, 0.4 -> round(1.2) = 1;
    the split is the same however the files are listed, and changes with the seed."""
    files = [tmp_path / "spk" / f"u{i}.wav" for i in range(3)]
    assert len(speech.split_by_utterance(files, 0.6, seed=0)[1]) == 2
    assert len(speech.split_by_utterance(files, 0.4, seed=0)[1]) == 1
    many = [tmp_path / spk / f"u{i}.wav" for spk in ("a", "b") for i in range(5)]
    held_sets = set()
    for seed in range(6):
        split = speech.split_by_utterance(many, 0.4, seed=seed)
        assert speech.split_by_utterance(many[::-1], 0.4, seed=seed) == split
        assert speech.split_by_utterance(many[3:] + many[:3], 0.4, seed=seed) == split
        held_sets.add(tuple(split[1]))
    assert len(held_sets) > 1


def test_feature_folder_round_trip_keeps_the_order_of_many_utterances(tmp_path, rng):
    """12 utterances: the files are numbered so that from_folder's sorted listing reads
    them back in the saved order (00, 01, ..., 11), frames and labels alike."""
    feats = [np.full((3, 2), u, np.float32) + rng.random((3, 2)).astype(np.float32)
             for u in range(12)]
    labels = [np.array(["a", "b", ""]) if u % 2 else np.array(["b", "", "a"]) for u in range(12)]
    data = speech.SpeechFrames.from_arrays(feats, labels, context=1)
    speech.save_feature_folder(data, tmp_path / "feats")
    again = speech.SpeechFrames.from_folder(tmp_path / "feats", context=1, normalize=False)
    np.testing.assert_array_equal(again.features, data.features)
    assert again.frame_labels.tolist() == data.frame_labels.tolist()
    assert again.offsets.tolist() == data.offsets.tolist()


def test_estimate_warp_scores_each_warp_by_the_mean_of_the_frame_maxima(monkeypatch):
    """confidence = mean over frames of max over phones: warp 1.1 has frame maxima 0.9 and
    0.5 (mean 0.7, min 0.5), warp 0.9 has 0.65 twice; the mean picks 1.1."""
    from mlpfast import speech as analysis

    class Frames:
        def __init__(self, files, phones, warp, **options):
            self.warp = warp

    def probabilities(model, data):
        if data.warp == 1.1:
            return np.array([[0.1, 0.9], [0.5, 0.5]])
        if data.warp == 0.9:
            return np.array([[0.65, 0.35], [0.35, 0.65]])
        return np.array([[0.55, 0.45], [0.45, 0.55]])

    monkeypatch.setattr(analysis, "SpeechFrames", Frames)
    monkeypatch.setattr(analysis, "predict_proba", probabilities)
    warp, confidence = analysis.estimate_warp(None, ["f.wav"], ["a", "b"], warps=(0.8, 0.9, 1.1))
    assert warp == 1.1
    assert confidence == pytest.approx({0.8: 0.55, 0.9: 0.65, 1.1: 0.7})
