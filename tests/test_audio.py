import io

import numpy as np
import pytest
import soundfile

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
