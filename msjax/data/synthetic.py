"""A synthetic emotional-speech corpus, generated with numpy/scipy, in the EMODB layout.

It lets training and tests run on a fresh machine with no downloads. Each utterance is a
source-filter "voice": a glottal pulse train (pitch contour with jitter and shimmer,
spectral tilt from a low-pass), mixed with breath noise and shaped by four formant
resonators per vowel, alternating with noise consonants. The emotion sets the pitch level,
range and slope, jitter, tempo (syllable rate), loudness, tilt and breathiness, as in the
acted-speech literature (anger loud, bright and fast; sadness quiet, dark, slow and falling;
...). Speakers differ in base pitch and vocal-tract length (formant scale). Sentences
("texts") are fixed vowel/consonant sequences shared by all speakers and emotions.

Files: `<root>/wav/<speaker:2><text:3><emotion:1>a.wav` (16 kHz, 16-bit, mono, 1.5-4 s)
with EMODB's emotion letters and labels, plus `<root>/synthetic.json`, the manifest.
Generation is deterministic given the settings; re-running with the same settings is a
no-op, other settings replace the corpus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from msjax.data import emodb
from msjax.data.layout import check_counts, layout_error
from msjax.data.records import Dataset
from msjax.errors import UsageError
from msjax.io.files import atomic_write

SAMPLE_RATE = 16000
MANIFEST = "synthetic.json"
GENERATOR_VERSION = 1
LABELS = emodb.LABELS
TREE = """\
<root>/
  synthetic.json     manifest (settings and file list)
  wav/
    01a01Wa.wav      <speaker:2><text:3><emotion:1 of WLEAFTN>a.wav
    ...
"""
MIN_SECONDS, MAX_SECONDS = 1.5, 4.0
EDGE_SILENCE = 0.15  # seconds of silence at either end


@dataclass(frozen=True)
class Style:
    """How one emotion shapes the voice.

    Attributes:
        f0_scale: Pitch level relative to the speaker's base.
        f0_range: Accent size in semitones.
        f0_slope: Pitch change over the utterance in semitones (declination when < 0).
        jitter: Relative cycle-to-cycle pitch perturbation.
        shimmer: Relative cycle-to-cycle amplitude perturbation.
        rate: Syllables per second.
        gain_db: Loudness relative to neutral.
        tilt: Pole of the glottal low-pass (closer to 1 = darker, steeper tilt).
        breath: Aspiration noise relative to the pulses.
    """

    f0_scale: float
    f0_range: float
    f0_slope: float
    jitter: float
    shimmer: float
    rate: float
    gain_db: float
    tilt: float
    breath: float


STYLES: dict[str, Style] = {
    "W": Style(1.35, 7.0, -3.0, 0.015, 0.10, 5.6, 7.0, 0.45, 0.02),  # anger
    "L": Style(0.85, 1.5, -1.0, 0.005, 0.04, 2.9, -5.0, 0.92, 0.04),  # boredom
    "E": Style(0.95, 4.0, -5.0, 0.030, 0.15, 3.6, -1.0, 0.78, 0.10),  # disgust
    "A": Style(1.60, 3.0, 2.0, 0.040, 0.12, 6.6, -2.0, 0.70, 0.20),  # fear
    "F": Style(1.30, 10.0, 2.0, 0.010, 0.06, 5.0, 3.0, 0.60, 0.03),  # happiness
    "T": Style(0.80, 2.0, -4.0, 0.012, 0.08, 2.5, -8.0, 0.95, 0.15),  # sadness
    "N": Style(1.00, 3.5, -2.0, 0.006, 0.05, 4.2, 0.0, 0.80, 0.04),  # neutral
}
# F1..F4 in Hz for an adult male vocal tract.
VOWELS = np.array(
    [
        [730, 1090, 2440, 3400],  # a
        [530, 1840, 2480, 3500],  # e
        [270, 2290, 3010, 3700],  # i
        [570, 840, 2410, 3400],  # o
        [300, 870, 2240, 3300],  # u
    ],
    dtype=np.float64,
)
BANDWIDTHS = np.array([80.0, 100.0, 140.0, 200.0])
# Noise bands (Hz) of the consonants: /s/, /sh/, /f/-like, and a plosive burst.
CONSONANTS = ((4000, 7500), (2000, 5000), (1200, 7000), (500, 4000))


def _speaker(seed: int, index: int) -> tuple[float, float]:
    """Base pitch (Hz) and formant scale of speaker `index`; even indices are female."""
    rng = np.random.default_rng([seed, 1, index])
    if index % 2 == 0:
        return float(rng.uniform(190, 235)), float(rng.uniform(1.10, 1.20))
    return float(rng.uniform(100, 130)), float(rng.uniform(0.94, 1.02))


def _text(seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Vowel and consonant indices of sentence `index` (8 to 11 syllables)."""
    rng = np.random.default_rng([seed, 2, index])
    n = int(rng.integers(8, 12))
    return rng.integers(0, len(VOWELS), n), rng.integers(0, len(CONSONANTS), n)


def _pitch(style: Style, base_f0: float, n: int, syllables: np.ndarray, rng) -> np.ndarray:
    """Per-sample f0 in Hz [n]: level, slope, accents on random syllables, jitter."""
    t = np.arange(n) / n
    semitones = style.f0_slope * t
    for start, stop in syllables:
        if rng.random() < 0.4:  # an accented syllable
            bump = np.zeros(n)
            bump[start:stop] = np.hanning(stop - start)
            semitones += style.f0_range * rng.uniform(0.6, 1.0) * bump
    # Jitter: a random pitch deviation per ~5 ms, held (a cycle-scale perturbation).
    hold = SAMPLE_RATE // 200
    wobble = np.repeat(rng.standard_normal(n // hold + 1), hold)[:n]
    f0 = base_f0 * style.f0_scale * 2.0 ** (semitones / 12.0)
    return f0 * (1.0 + style.jitter * wobble)


def _glottal_source(f0: np.ndarray, style: Style, rng) -> np.ndarray:
    """Pulse train at `f0` [n] with shimmer, low-passed twice for the spectral tilt."""
    phase = np.cumsum(f0) / SAMPLE_RATE
    pulses = np.zeros_like(f0)
    onsets = np.flatnonzero(np.diff(np.floor(phase), prepend=0.0) > 0)
    pulses[onsets] = 1.0 + style.shimmer * rng.standard_normal(len(onsets))
    a = style.tilt
    source = signal.lfilter([1.0 - a], [1.0, -a], pulses)
    source = signal.lfilter([1.0 - a], [1.0, -a], source)
    return source / (np.std(source) + 1e-9)


def _formant_sos(formants: np.ndarray) -> np.ndarray:
    """Cascade of unit-DC-gain two-pole resonators (one sos row per formant) [4, 6]."""
    r = np.exp(-np.pi * BANDWIDTHS / SAMPLE_RATE)
    b = 2.0 * r * np.cos(2.0 * np.pi * formants / SAMPLE_RATE)
    c = -(r**2)
    sos = np.zeros((len(formants), 6))
    sos[:, 0] = 1.0 - b - c
    sos[:, 3], sos[:, 4], sos[:, 5] = 1.0, -b, -c
    return sos


def _envelope(n: int, ramp: int) -> np.ndarray:
    """Raised-cosine attack and decay over `ramp` samples [n]."""
    env = np.ones(n)
    ramp = min(ramp, n // 2)
    if ramp:
        rise = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, ramp))
        env[:ramp], env[n - ramp :] = rise, rise[::-1]
    return env


def synthesize(seed: int, speaker: int, text: int, emotion: str) -> np.ndarray:
    """One utterance, float32 [N] at 16 kHz, deterministic in its arguments.

    Args:
        seed: Corpus seed.
        speaker: Speaker index (from 0).
        text: Sentence index (from 0).
        emotion: EMODB emotion letter (one of WLEAFTN).
    """
    style = STYLES[emotion]
    rng = np.random.default_rng([seed, 3, speaker, text, ord(emotion)])
    base_f0, formant_scale = _speaker(seed, speaker)
    vowels, consonants = _text(seed, text)
    rate = style.rate * rng.uniform(0.9, 1.1)
    speech = min(len(vowels) / rate, MAX_SECONDS - 2 * EDGE_SILENCE)
    total = max(MIN_SECONDS, speech + 2 * EDGE_SILENCE)
    n, n_speech = int(total * SAMPLE_RATE), int(speech * SAMPLE_RATE)
    offset = (n - n_speech) // 2
    bounds = offset + np.linspace(0, n_speech, len(vowels) + 1).astype(int)
    syllables = np.stack([bounds[:-1], bounds[1:]], axis=1)
    source = _glottal_source(_pitch(style, base_f0, n, syllables, rng), style, rng)
    source += style.breath * rng.standard_normal(n)
    out = np.zeros(n)
    for (start, stop), vowel, consonant in zip(syllables, vowels, consonants, strict=True):
        split = start + (stop - start) // 4  # consonant, then vowel
        lo, hi = CONSONANTS[consonant]
        band = signal.butter(4, [lo, hi], btype="bandpass", fs=SAMPLE_RATE, output="sos")
        noise = signal.sosfilt(band, rng.standard_normal(split - start))
        out[start:split] = 0.3 * noise * _envelope(split - start, SAMPLE_RATE // 200)
        formants = np.minimum(VOWELS[vowel] * formant_scale, 0.45 * SAMPLE_RATE)
        voiced = signal.sosfilt(_formant_sos(formants), source[split:stop])
        stress = 10.0 ** (rng.uniform(-3.0, 3.0) / 20.0)
        out[split:stop] = stress * voiced * _envelope(stop - split, SAMPLE_RATE // 60)
    # Loudness carries the emotion: scale to a fixed RMS over the speech, then apply the gain.
    gain_db = style.gain_db + rng.uniform(-1.5, 1.5)
    rms = np.sqrt(np.mean(out[offset : offset + n_speech] ** 2))
    out *= 0.05 * 10.0 ** (gain_db / 20.0) / (rms + 1e-9)
    return np.clip(out, -0.99, 0.99).astype(np.float32)


def _config(seed: int, num_speakers: int, utterances_per_emotion: int) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "num_speakers": num_speakers,
        "utterances_per_emotion": utterances_per_emotion,
        "sample_rate": SAMPLE_RATE,
    }


def _file_name(speaker: int, text: int, emotion: str) -> str:
    return f"{speaker + 1:02d}a{text + 1:02d}{emotion}a.wav"


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def generate_corpus(
    root: Path, *, seed: int = 0, num_speakers: int = 6, utterances_per_emotion: int = 4
) -> Path:
    """Writes the synthetic corpus under `root` unless the same one is already there.

    Args:
        root: Output directory (created); the corpus goes to `root/wav`.
        seed: Seeds every random choice; the same seed gives the same files.
        num_speakers: Speakers (1..99), alternating female/male.
        utterances_per_emotion: Sentences each speaker says in each emotion (1..99).

    Returns:
        `root`, ready for `load`.

    Raises:
        UsageError: sizes out of range.
    """
    if not 1 <= num_speakers <= 99 or not 1 <= utterances_per_emotion <= 99:
        raise UsageError(
            f"synthetic corpus: num_speakers and utterances_per_emotion must be in 1..99, got "
            f"{num_speakers} and {utterances_per_emotion}"
        )
    root = Path(root)
    config = _config(seed, num_speakers, utterances_per_emotion)
    names = {
        _file_name(s, t, e): (s, t, e)
        for s in range(num_speakers)
        for e in emodb.EMOTIONS
        for t in range(utterances_per_emotion)
    }
    old = _read_manifest(root)
    wav_dir = root / "wav"
    if old is not None and old.get("config") == config:
        if all((wav_dir / name).is_file() for name in names):
            return root
    # Remove the manifest first so an interrupted run is never taken for a complete one.
    (root / MANIFEST).unlink(missing_ok=True)
    for name in (old or {}).get("files", []):
        if name not in names:
            (wav_dir / name).unlink(missing_ok=True)
    wav_dir.mkdir(parents=True, exist_ok=True)
    for name, (s, t, e) in names.items():
        # Whole files only: jobs generating one corpus at once write the same bytes.
        wav = synthesize(seed, s, t, e)
        atomic_write(
            wav_dir / name,
            lambda f, wav=wav: sf.write(f, wav, SAMPLE_RATE, subtype="PCM_16", format="WAV"),
            "the synthetic corpus",
        )
    _write_json(root / MANIFEST, {"config": config, "files": sorted(names)})
    return root


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=1)
    atomic_write(path, lambda f: f.write(text.encode()), "the synthetic corpus")


def load(root: Path, *, allow_count_mismatch: bool = False) -> Dataset:
    """Reads a corpus written by `generate_corpus` (EMODB reader, EMODB labels).

    Args:
        root: The directory given to `generate_corpus`.
        allow_count_mismatch: Only warn when counts differ from the manifest's settings.

    Raises:
        LayoutError: no manifest (the corpus was never generated there) or no `wav/`.
        DataError: counts differ from the manifest and `allow_count_mismatch` is False.
    """
    root = Path(root)
    manifest = _read_manifest(root)
    if manifest is None or "config" not in manifest:
        raise layout_error(
            root,
            f"no readable {MANIFEST}; create the corpus with "
            "msjax.data.synthetic.generate_corpus(root)",
            TREE,
        )
    config = manifest["config"]
    per_class = config["num_speakers"] * config["utterances_per_emotion"]
    dataset = emodb.read_tree(root, "synthetic")
    check_counts(
        dataset,
        root,
        per_class * len(LABELS),
        {label: per_class for label in LABELS},
        config["num_speakers"],
        allow_count_mismatch=allow_count_mismatch,
    )
    return dataset
