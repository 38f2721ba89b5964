"""A synthetic speech corpus from Debian's festival, for people without a licensed one.

``synth_speech(out, voices=("kal", "ked", "slt"), utterances=150, seed=0)`` writes

    out/phones.txt                  the phone set (PHONES, one per line)
    out/<voice>/<voice>_<nnnn>.flac 16 kHz mono 16-bit FLAC
    out/<voice>/<voice>_<nnnn>.PHN  TIMIT-style alignment: start end phone, in samples
    out/<voice>/<voice>_<nnnn>.txt  the sentence

Each sentence is 5-12 words drawn uniformly from the CMU lexicon that festival ships
(festlex-cmu, lower-case alphabetic entries of 2-10 letters), spoken at a random rate
(festival's Duration_Stretch uniform in [0.85, 1.2]). One festival process per voice
synthesizes its utterances, resamples them to 16 kHz and saves the wave and the phone
segments with their end times; the segments become .PHN lines (start = previous end).

Phone set: every voice speaks the CMU lexicon's phones (ARPAbet, with ax for reduced
vowels) plus festival's pause 'pau'. They map to the 41 ``PHONES``: the 39 CMU phones,
ax, and sil (= pau). Radio-phoneset extras fold as in the usual 39-phone reduction:
axr->er, ix->ih, dx->t, el->l, em->m, en->n, nx->n. Any other phone is an error.
The random stream of each voice depends on (seed, voice) only.
"""
import random
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .speech import PHONES_FILE, Segment, write_phn

SAMPLE_RATE = 16000
INSTALL_HINT = ("sudo apt-get install festival festvox-kallpc16k festvox-kdlpc16k "
                "festvox-us-slt-hts")
VOICES = {  # short name -> (festival voice function, Debian package)
    "kal": ("voice_kal_diphone", "festvox-kallpc16k"),
    "ked": ("voice_ked_diphone", "festvox-kdlpc16k"),
    "slt": ("voice_cmu_us_slt_arctic_hts", "festvox-us-slt-hts"),
}
LEXICON = Path("/usr/share/festival/dicts/cmu/cmudict-0.4.out")
CMU_PHONES = ("aa ae ah ao aw ay b ch d dh eh er ey f g hh ih iy jh k l m n ng ow oy p r s sh "
              "t th uh uw v w y z zh").split()
PHONES = tuple(sorted(CMU_PHONES + ["ax", "sil"]))
FOLD = {"pau": "sil", "h#": "sil", "#": "sil", "axr": "er", "ix": "ih", "dx": "t", "el": "l",
        "em": "m", "en": "n", "nx": "n"}
WORDS_PER_SENTENCE = (5, 12)
DURATION_STRETCH = (0.85, 1.2)


def check_festival():
    """Path of the festival binary, or a RuntimeError saying how to install it."""
    path = shutil.which("festival")
    if path is None:
        raise RuntimeError(f"festival is not installed; install it and the voices with:\n"
                           f"    {INSTALL_HINT}")
    if not LEXICON.exists():
        raise RuntimeError(f"festival's CMU lexicon {LEXICON} is missing; install it with:\n"
                           f"    sudo apt-get install festlex-cmu")
    return path


def lexicon_words(path=LEXICON):
    """Sorted distinct lower-case alphabetic words of 2-10 letters in the lexicon."""
    pattern = re.compile(r'^\("([a-z]{2,10})" ')
    with open(path, encoding="latin-1") as f:
        return sorted({m.group(1) for m in map(pattern.match, f) if m})


def fold_phone(phone, voice):
    phone = FOLD.get(phone, phone)
    if phone not in PHONES:
        raise ValueError(f"voice {voice!r} produced phone {phone!r}, which has no mapping to "
                         f"the phone set {PHONES}")
    return phone


def parse_segs(text):
    """(end_seconds, phone) pairs of a festival .segs (xlabel) file: lines after '#'."""
    lines = text.splitlines()
    if "#" not in lines:
        raise ValueError("festival segment file has no '#' header line")
    pairs = []
    for line in lines[lines.index("#") + 1:]:
        fields = line.split()
        if len(fields) == 3:
            pairs.append((float(fields[0]), fields[2]))
    return pairs


def segments_from_ends(ends, num_samples, sample_rate, voice):
    """Segments covering [0, last end): start = previous end; zero-length ones dropped."""
    segments, start = [], 0
    for end_seconds, phone in ends:
        end = min(int(round(end_seconds * sample_rate)), num_samples)
        if end > start:
            segments.append(Segment(start, end, fold_phone(phone, voice)))
            start = end
    return segments


def _sentences(words, count, rng):
    return [(" ".join(rng.choice(words) for _ in range(rng.randint(*WORDS_PER_SENTENCE))),
             rng.uniform(*DURATION_STRETCH)) for _ in range(count)]


def _synthesize_voice(festival, voice, sentences, folder, work):
    import soundfile

    function, package = VOICES[voice]
    script = [f"({function})"]
    for i, (text, stretch) in enumerate(sentences):
        stem = work / f"{voice}_{i:04d}"
        script += [f"(Parameter.set 'Duration_Stretch {stretch:.4f})",
                   f'(set! utt (utt.synth (Utterance Text "{text}")))',
                   f"(utt.wave.resample utt {SAMPLE_RATE})",
                   f"(utt.save.wave utt \"{stem}.wav\" 'riff)",
                   f'(utt.save.segs utt "{stem}.segs")']
    script_path = work / f"{voice}.scm"
    script_path.write_text("\n".join(script) + "\n")
    run = subprocess.run([festival, "-b", str(script_path)], capture_output=True, text=True)
    if f"unbound variable : {function}" in run.stdout + run.stderr:
        raise RuntimeError(f"festival has no voice {voice!r} ({function}); install it with:\n"
                           f"    sudo apt-get install {package}")
    folder.mkdir(parents=True, exist_ok=True)
    for i, (text, _) in enumerate(sentences):
        stem = f"{voice}_{i:04d}"
        wav = work / f"{stem}.wav"
        if run.returncode != 0 or not wav.exists():
            raise RuntimeError(f"festival failed on voice {voice!r}, sentence {i} ({text!r}):\n"
                               f"{(run.stdout + run.stderr)[-2000:]}")
        audio, rate = soundfile.read(str(wav), dtype="int16")
        if rate != SAMPLE_RATE:
            raise RuntimeError(f"festival wrote {rate} Hz for voice {voice!r}, "
                               f"expected {SAMPLE_RATE}")
        segments = segments_from_ends(parse_segs((work / f"{stem}.segs").read_text()),
                                      audio.shape[0], rate, voice)
        soundfile.write(str(folder / f"{stem}.flac"), audio, rate, subtype="PCM_16")
        write_phn(folder / f"{stem}.PHN", segments)
        (folder / f"{stem}.txt").write_text(text + "\n")


def synth_speech(out, voices=("kal", "ked", "slt"), utterances=150, seed=0, jobs=2):
    """Write the corpus under ``out`` (see the module docstring); returns the audio paths."""
    voices = list(voices)
    unknown = [v for v in voices if v not in VOICES]
    if unknown or not voices:
        raise ValueError(f"voices must be among {sorted(VOICES)}, got {voices}")
    if isinstance(utterances, bool) or not isinstance(utterances, (int, np.integer)) \
            or utterances < 1:
        raise ValueError(f"utterances must be a positive integer, got {utterances!r}")
    festival = check_festival()
    words = lexicon_words()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / PHONES_FILE).write_text("".join(p + "\n" for p in PHONES))
    with tempfile.TemporaryDirectory(prefix="mlpfast-synth-") as tmp:
        def one(voice):
            work = Path(tmp) / voice
            work.mkdir()
            sentences = _sentences(words, utterances, random.Random(f"{seed}-{voice}"))
            return _synthesize_voice(festival, voice, sentences, out / voice, work)

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(one, voices))
    return sorted((out / v / f"{v}_{i:04d}.flac") for v in voices for i in range(utterances))
