"""Runs an ONNX export folder with onnxruntime + numpy + PIL (no jax).

  det = load_onnx("exported_onnx/")             # CPUExecutionProvider
  det.set_prompts(normal_uint8[:K])             # InCTRL exports only
  out = det.predict(uint8_images, "bottle")     # maps at the model size

Graph inputs, in export.json's `inputs` order: `pixels` f32[batch, S, S, 3]
(normalised NHWC; `batch` is dynamic), the runtime inputs (InCTRL
`prompts` f32[K, S, S, 3]) and the class inputs, fed from the table file
(MoECLIP / InCTRL `text`, AnomalyMoE `class_id`, `known`, `min_max`).
Outputs: `anomaly_map` f32[batch, S, S], `image_score` f32[batch].
"""

from __future__ import annotations

from typing import Sequence

from moeclip_jax.inference import exported

OUTPUTS = ("anomaly_map", "image_score")


class OnnxDetector(exported.ExportFolder):
  """An ONNX export folder in an onnxruntime session."""

  format = exported.ONNX_FORMAT

  def __init__(self, folder, providers: Sequence[str] | None = None):
    super().__init__(folder)
    try:
      import onnxruntime  # pylint: disable=g-import-not-at-top
    except ImportError as err:
      raise ValueError("running an ONNX export needs onnxruntime: pip "
                       "install 'moeclip_jax[onnx]'") from err
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only (no fusion notes)
    self.session = onnxruntime.InferenceSession(
        str(self.folder / self.meta["program"]), options,
        providers=list(providers or ["CPUExecutionProvider"]))
    self.input_names = [i["name"] for i in self.meta["inputs"]]

  def _call(self, pixels, runtime, class_inputs):
    feeds = dict(zip(self.input_names, [pixels, *runtime, *class_inputs],
                     strict=True))
    return self.session.run(list(OUTPUTS), feeds)


def load_onnx(folder, providers: Sequence[str] | None = None
              ) -> OnnxDetector:
  return OnnxDetector(folder, providers)
