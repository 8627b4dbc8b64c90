"""infer.py's image mode (`xlab/captions/front_end.py`): a model that does not caption images is
refused in one line, before any work."""

from __future__ import annotations

import pytest

from tests.captions.helpers import save_image
from tests.helpers import load_script


def test_image_on_a_text_model_is_one_line(cli_checkpoint, tmp_path, capsys):
    image = save_image(tmp_path / "shape.png", 3)
    with pytest.raises(SystemExit) as exit_:
        load_script("infer").main([str(cli_checkpoint), "--image", str(image), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert "--image needs a model trained to caption images" in err[0] and "XLabModel" in err[0]
