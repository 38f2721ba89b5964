"""Lesson: phonemes from speech frames. An utterance becomes T frames of 28 MFCC (25 ms
windows every 10 ms); each frame, with its K neighbours on either side, is one sample
of (2K+1)*28 numbers, labeled with the phone that holds the frame's centre. An MLP
classifies the frames; more context (larger K) lets it see the transitions that tell
similar phones apart.

Without a corpus of your own, festival speaks one (apt-get install festival
festvox-kallpc16k festvox-kdlpc16k): 40 utterances of each of two voices, into a
temporary folder (removed at the end) unless DIR is given.

    python examples/speech_frames.py [DIR]
"""
import sys
import tempfile
from pathlib import Path

import numpy as np

import mlpfast as mf
from mlpfast import speech as speech_analysis
from mlpfast.data import speech
from mlpfast.data.synth import synth_speech

scratch = tempfile.TemporaryDirectory()          # removed when the script ends
folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(scratch.name) / "speech"
if not any(folder.rglob("*.PHN")):
    print(f"synthesizing 2 x 40 utterances into {folder} ...")
    synth_speech(folder, ["kal", "ked"], utterances=40, seed=0)
files = speech.find_audio([folder])
phones = speech.read_phone_list(folder / "phones.txt") if (folder / "phones.txt").exists() \
    else None

# One utterance: its alignment, and the label rule applied to its frames.
signal, rate = speech.read_audio(files[0])
segments = speech.read_phn(speech.phn_path(files[0]), num_samples=len(signal))
spec = speech.feature_spec(rate)
labels = speech.frame_phones(segments, spec.frame_centers(spec.num_frames(len(signal))))
print(f"{files[0].name}: {len(signal) / rate:.2f} s, {len(segments)} phones, "
      f"{len(labels)} frames; the first 30 frame labels:\n  {' '.join(labels[:30])}")

train_files, test_files = speech.split_by_utterance(files, 0.25, seed=0)
for context in (0, 5):
    train = speech.SpeechFrames(train_files, context=context, phones=phones)
    test = speech.SpeechFrames(test_files, context=context, phones=train.phones)
    model = mf.MLP([train.num_features, 256, train.num_classes], seed=0)
    optimizer = mf.optim.Adam(model.parameters(), lr=1e-3)
    history = mf.fit(model, optimizer, mf.CrossEntropyLoss(), train, epochs=3, batch_size=128,
                     seed=0, progress=False)
    result = mf.evaluate(model, test)
    confused = speech_analysis.top_confusions(result["confusion_matrix"], train.phones, 3)
    print(f"context +-{context}: {train.num_features} inputs, {len(train)} training frames, "
          f"{np.median(history['samples_per_s']):,.0f} frames/s; held-out frame accuracy "
          f"{100 * result['accuracy']:.1f}%; most confused: "
          + ", ".join(f"{t}->{p} ({n})" for t, p, n in confused))
