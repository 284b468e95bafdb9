"""Models and data that ship with tvmdeploy (see tests/fixtures/train_digits_cnn.py).

digits_cnn.onnx: a small CNN trained on scikit-learn's 8x8 digits (99.4% test accuracy),
input "image" float32[1,1,8,8], output "logits" float32[1,10].
digits_test.npz: its held-out test split, "image" float32[360,1,8,8] and "label" int64[360].
digits_calibration.npz: 300 samples of its training split (same keys), for calibrating
pruning and quantization without touching the test split.
"""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
DIGITS_CNN = DATA_DIR / "digits_cnn.onnx"
DIGITS_TEST = DATA_DIR / "digits_test.npz"
DIGITS_CALIBRATION = DATA_DIR / "digits_calibration.npz"
