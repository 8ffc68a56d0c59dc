import io
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from scipy import signal

from inatsounds_jax import audio


def _wav_bytes(samples, rate=audio.SAMPLE_RATE, subtype="PCM_16"):
  buf = io.BytesIO()
  soundfile.write(buf, samples, rate, subtype=subtype, format="WAV")
  return buf.getvalue()


def test_int16_mono_passes_through_bit_exact():
  x = np.random.default_rng(0).integers(-32768, 32768, 5000).astype(np.int16)
  np.testing.assert_array_equal(audio.decode_audio(_wav_bytes(x)), x)


def test_stereo_is_averaged():
  left = np.full(1000, 1000, np.int16)
  right = np.full(1000, -3000, np.int16)
  out = audio.decode_audio(_wav_bytes(np.stack([left, right], 1)))
  np.testing.assert_array_equal(out, np.full(1000, -1000, np.int16))


def test_other_rates_are_resampled():
  rate = 44_100
  t = np.arange(rate) / rate
  tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
  out = audio.decode_audio(_wav_bytes(tone, rate))
  assert len(out) == audio.SAMPLE_RATE
  spectrum = np.abs(np.fft.rfft(out))
  assert abs(np.argmax(spectrum) - 440) <= 1  # 1 s long: bin = 1 Hz.


def test_float_wav_is_scaled_like_the_dataset():
  x = np.array([0.0, 0.5, -1.0, 1.0])
  out = audio.decode_audio(_wav_bytes(x, subtype="FLOAT"))
  np.testing.assert_array_equal(out, [0, 16384, -32767, 32767])


def test_float_wav_beyond_full_scale_is_clipped_and_reported_once(
    monkeypatch):
  warnings = []
  monkeypatch.setattr(audio.logging, "warning",
                      lambda *args: warnings.append(args[0] % args[1:]))
  x = np.tile([0.0, 4.0, -4.0, 0.5, 1.0, -1.0], 50_000)  # Several blocks.
  with audio.BlockDecoder(io.BytesIO(_wav_bytes(x, subtype="FLOAT")),
                          name="loud.wav") as decoder:
    out = np.concatenate(list(decoder))
    assert (decoder.clipped_samples, decoder.clipped_peak) == (100_000, 4.0)
  np.testing.assert_array_equal(
      out[:6], [0, 32767, -32768, 16384, 32767, -32767])
  assert warnings == ["loud.wav: 100000 samples beyond full scale (peak 4, "
                      "1.0 = full scale) were clipped to it."]


def test_a_decoder_told_not_to_report_clipping_leaves_it_to_its_caller(
    monkeypatch, tmp_path):
  warnings = []
  monkeypatch.setattr(audio.logging, "warning",
                      lambda *args: warnings.append(args))
  path = str(tmp_path / "loud.wav")
  soundfile.write(path, np.tile([0.0, 4.0], 1000), audio.SAMPLE_RATE,
                  subtype="FLOAT")
  with audio.open_audio_file(path, report_clipping=False) as decoder:
    assert decoder.clipping_report() == ""
    list(decoder)
  assert not warnings
  assert decoder.clipping_report() == (
      f"{path}: 1000 samples beyond full scale (peak 4, 1.0 = full scale) "
      "were clipped to it.")


def test_full_scale_int16_is_not_reported_as_clipped(monkeypatch):
  warnings = []
  monkeypatch.setattr(audio.logging, "warning",
                      lambda *args: warnings.append(args))
  x = np.array([[-32768, -32768], [32767, 32767], [0, 0]], np.int16)
  with audio.BlockDecoder(io.BytesIO(_wav_bytes(x))) as decoder:
    np.testing.assert_array_equal(np.concatenate(list(decoder)),
                                  [-32768, 32767, 0])
    assert decoder.clipped_samples == 0 and decoder.clipped_peak == 0.0
  assert not warnings


@pytest.mark.parametrize("data, message", [
    (b"", "empty file"),
    (b"this is not audio at all" * 10, "unreadable audio"),
])
def test_broken_input_raises_with_reason(data, message):
  with pytest.raises(audio.AudioError, match=message):
    audio.decode_audio(data)


def test_truncated_wav_is_detected():
  good = _wav_bytes(np.zeros(10000, np.int16))
  with pytest.raises(audio.AudioError, match="truncated WAV"):
    audio.decode_audio(good[:len(good) // 2])


def test_wav_with_no_samples():
  with pytest.raises(audio.AudioError, match="no samples"):
    audio.decode_audio(_wav_bytes(np.zeros(0, np.int16)))


def test_read_audio_file_names_the_file(tmp_path):
  path = tmp_path / "broken.wav"
  path.write_bytes(b"RIFF....WAVEjunk")
  with pytest.raises(audio.AudioError, match="broken.wav"):
    audio.read_audio_file(str(path))


def test_errors_name_the_file_not_a_buffer():
  with pytest.raises(audio.AudioError) as e:
    audio.decode_audio(b"this is not audio at all" * 10,
                       name="train/a/x.wav")
  assert str(e.value).startswith("train/a/x.wav: unreadable audio: ")
  assert "BytesIO" not in str(e.value) and "0x" not in str(e.value)
  assert e.value.kind == "unreadable audio"


@pytest.mark.parametrize("rate", [48_000, 44_100, 16_000, 96_000])
def test_streaming_resampler_equals_whole_signal(rate):
  rng = np.random.default_rng(rate)
  x = rng.standard_normal(3 * rate + 17) * 0.3
  g = np.gcd(rate, audio.SAMPLE_RATE)
  up, down = audio.SAMPLE_RATE // g, rate // g
  resampler = audio.StreamingResampler(up, down)
  pieces, start = [], 0
  for size in [1, 0, 7] + list(rng.integers(1, 20_000, 40)):  # Any sizes.
    pieces.append(resampler.process(x[start:start + size]))
    start += size
  pieces += [resampler.process(x[start:]), resampler.finish()]
  np.testing.assert_allclose(np.concatenate(pieces),
                             signal.resample_poly(x, up, down),
                             rtol=0, atol=1e-12)


def _long_stereo_wav(path, seconds, rate=48_000):
  """A tone plus noise, written block by block."""
  rng = np.random.default_rng(0)
  with soundfile.SoundFile(path, "w", rate, 2, "PCM_16") as f:
    for start in range(0, seconds * rate, rate):
      t = (start + np.arange(rate)) / rate
      tone = 0.3 * np.sin(2 * np.pi * 1000 * t)
      f.write(np.stack([tone + 0.05 * rng.standard_normal(rate),
                        0.5 * tone], axis=1))


def test_long_stereo_file_decodes_in_blocks_like_the_whole_file(tmp_path):
  path = str(tmp_path / "long.wav")
  _long_stereo_wav(path, 20)
  samples, _ = soundfile.read(path, dtype="int16")
  mono = samples.astype(np.float64).mean(axis=1) / audio.INT16_SCALE
  whole = audio.to_int16(signal.resample_poly(mono, 147, 320))
  streamed = audio.read_audio_file(path)
  assert len(streamed) == len(whole)
  assert np.abs(streamed.astype(int) - whole).max() <= 1  # int16 rounding.


_PEAK_MEMORY_SCRIPT = """
import resource, sys
from inatsounds_jax import audio
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open(sys.argv[1], "rb") as f:  # As the builder gives it.
  waveform = audio.decode_audio(f)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024, waveform.nbytes)
"""


def test_decoding_memory_is_bounded_by_input_and_output(tmp_path):
  # Four minutes of 48 kHz stereo: 46 MB of PCM, whose float64 copy alone
  # would be 184 MB.
  path = str(tmp_path / "four_minutes.wav")
  _long_stereo_wav(path, 240)
  result = subprocess.run([sys.executable, "-c", _PEAK_MEMORY_SCRIPT, path],
                          capture_output=True, text=True, check=True)
  peak_growth, output_bytes = map(int, result.stdout.split())
  # The int16 output and a few blocks of working memory; the file is read
  # block by block, never whole.
  assert peak_growth < 2 * output_bytes + (16 << 20), (peak_growth,
                                                       output_bytes)


def test_find_audio_walks_folders_sorted_with_relative_paths(tmp_path):
  for name in ("b.WAV", "a.mp3", "sub/c.flac", "notes.txt", "sub/d.ogg"):
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_bytes(b"")
  assert audio.find_audio(str(tmp_path)) == [
      (str(tmp_path / r), r) for r in ("a.mp3", "b.WAV", "sub/c.flac",
                                       "sub/d.ogg")]
  (tmp_path / "list.txt").write_text("sub/c.flac\n\na.mp3\n")
  assert audio.find_audio(str(tmp_path / "list.txt")) == [
      (str(tmp_path / "sub/c.flac"), "sub/c.flac"),
      (str(tmp_path / "a.mp3"), "a.mp3")]


def test_a_listed_absolute_or_climbing_path_stays_inside_the_output(
    tmp_path):
  (tmp_path / "lists").mkdir()
  (tmp_path / "a.mp3").write_bytes(b"")
  (tmp_path / "lists" / "list.txt").write_text(
      f"{tmp_path / 'a.mp3'}\n../a.mp3\n")
  found = audio.find_audio(str(tmp_path / "lists" / "list.txt"))
  mirrored = str(tmp_path / "a.mp3").lstrip("/")
  assert [r for _, r in found] == [mirrored, mirrored]
  for _, relative in found:  # Joined to an output folder, it stays there.
    assert os.path.join("/out", relative).startswith("/out/")


@pytest.mark.parametrize("make, reason", [
    (lambda d: d / "absent", "no such file or folder"),
    (lambda d: d, "no audio files (.wav, .flac, .ogg, .mp3) in this folder"),
    (lambda d: d / "empty.txt", "the list names no recordings"),
    (lambda d: d / "gone.txt", "listed recordings not found:\n  "),
    (lambda d: d / "image.png", "neither a recording (.wav, .flac, .ogg, "
     ".mp3) nor a readable text list of recordings"),
])
def test_find_audio_names_the_input_and_what_is_wrong(tmp_path, make,
                                                      reason):
  (tmp_path / "empty.txt").write_text("\n")
  (tmp_path / "gone.txt").write_text("here.wav\n")
  (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
  path = str(make(tmp_path))
  with pytest.raises(audio.NoAudioError) as e:
    audio.find_audio(path)
  assert (e.value.path, str(e.value)) == (path, f"{path}: {e.value.reason}")
  assert reason in e.value.reason
