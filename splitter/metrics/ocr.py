"""`ocr-text`: a text recogniser's split answer agrees when it reads the same text.

The outputs of a CTC recogniser such as PP-OCR's (per time step, a score for each character of
its dictionary) are decoded with the recogniser's own decoder (rapidocr-onnxruntime's, as the OCR
pipeline reads them: best path, repeats and blanks removed), and the two strings must be equal.
A detector's answer needs the image too (its boxes are cut out of it and read), so it is not
judged here; splitter.tasks.ocr runs that whole pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from splitter.metrics._registry import register_metric


@register_metric("ocr-text")
class OcrText:
    name = "ocr-text"

    def __init__(self) -> None:
        from splitter.tasks import ocr

        self._decode = ocr._engine().text_rec.postprocess_op

    def text(self, outputs: Sequence[np.ndarray]) -> str:
        return self._decode(np.asarray(outputs[0]))[0][0]

    def passes(self, reference: Sequence[np.ndarray], split: Sequence[np.ndarray]) -> bool:
        return self.text(split) == self.text(reference)
