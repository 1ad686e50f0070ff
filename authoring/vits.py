"""VITS / MMS-TTS for torch.onnx: one graph from token ids to a waveform, its noise fed in.

transformers' VitsModel draws its noise with torch.randn inside forward (the stochastic duration predictor's latents,
then the prior's), reads the noise scales from the model object and takes the speaking rate as an argument. An ONNX
graph of that would sample with onnxruntime's own generator, which no seed reaches, and bake the scales in. The module
here is VitsModel's inference path step for step with those as graph inputs instead: ``noise_scale``,
``noise_scale_duration``, ``speaking_rate`` (float scalars), ``duration_noise`` (batch, 2, tokens) and ``prior_noise``
(batch, flow_size, frames). The runtime draws the noise with numpy from a seed. How many frames the prior needs is
known only inside the graph (the predicted durations); a shorter ``prior_noise`` is padded with zeros there, and the
graph's second output, ``frames``, tells the runtime to run again with enough when it was short.

torch is imported inside the function that uses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

INPUTS = ("input_ids", "attention_mask", "noise_scale", "noise_scale_duration", "speaking_rate", "duration_noise",
          "prior_noise")
OUTPUTS = ("waveform", "frames")


def waveform_module(model: Any) -> Any:
    """A torch module around a VitsModel: INPUTS -> OUTPUTS, as VitsModel.forward computes them with the noise given
    (speaker embeddings: none, as the pipeline runs a model without speaker_id)."""
    import torch
    from torch import nn

    config = model.config

    def duration(hidden: Any, mask: Any, noise: Any) -> Any:
        """The log durations: the stochastic predictor's reverse flows from the noise given, or the plain predictor."""
        predictor = model.duration_predictor
        if not config.use_stochastic_duration_prediction:
            return predictor(hidden, mask, None)
        inputs = predictor.conv_pre(torch.detach(hidden))
        inputs = predictor.conv_dds(inputs, mask)
        inputs = predictor.conv_proj(inputs) * mask
        flows = list(reversed(predictor.flows))
        flows = [*flows[:-2], flows[-1]]  # as transformers: the unused flow removed
        latents = noise
        for flow in flows:
            latents = torch.flip(latents, [1])
            latents, _ = flow(latents, mask, global_conditioning=inputs, reverse=True)
        log_duration, _ = torch.split(latents, [1, 1], dim=1)
        return log_duration

    class Waveform(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, noise_scale: Any, noise_scale_duration: Any,
                    speaking_rate: Any, duration_noise: Any, prior_noise: Any) -> Any:
            dtype = self.model.text_encoder.embed_tokens.weight.dtype
            padding = attention_mask.unsqueeze(-1).to(dtype)
            encoded = self.model.text_encoder(input_ids=input_ids, padding_mask=padding, attention_mask=attention_mask,
                                              return_dict=True)
            hidden = encoded.last_hidden_state.transpose(1, 2)
            padding = padding.transpose(1, 2)
            log_duration = duration(hidden, padding, duration_noise * noise_scale_duration)
            length_scale = 1.0 / speaking_rate
            durations = torch.ceil(torch.exp(log_duration) * padding * length_scale)
            lengths = torch.clamp_min(torch.sum(durations, [1, 2]), 1).long()
            indices = torch.arange(lengths.max(), dtype=lengths.dtype, device=lengths.device)  # type: ignore[call-overload]
            output_padding = (indices.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(1).to(padding.dtype)
            attn_mask = torch.unsqueeze(padding, 2) * torch.unsqueeze(output_padding, -1)
            batch_size, _, output_length, input_length = attn_mask.shape
            cumulative = torch.cumsum(durations, -1).view(batch_size * input_length, 1)
            positions = torch.arange(output_length, dtype=durations.dtype, device=durations.device)
            valid = (positions.unsqueeze(0) < cumulative).to(attn_mask.dtype).view(batch_size, input_length, output_length)
            padded = valid - nn.functional.pad(valid, [0, 0, 1, 0, 0, 0])[:, :-1]
            attn = padded.unsqueeze(1).transpose(2, 3) * attn_mask
            means = torch.matmul(attn.squeeze(1), encoded.prior_means).transpose(1, 2)
            log_variances = torch.matmul(attn.squeeze(1), encoded.prior_log_variances).transpose(1, 2)
            # the noise given, cut to the frames (zeros past its end: the runtime runs again with enough)
            noise = torch.cat([prior_noise, torch.zeros_like(means)], dim=2)[:, :, : means.size(2)]
            latents = means + noise * torch.exp(log_variances) * noise_scale
            latents = self.model.flow(latents, output_padding, None, reverse=True)
            waveform = self.model.decoder(latents * output_padding, None).squeeze(1)
            return waveform, lengths

    return Waveform().eval()


def export_vits(model: Any, path: Path, opset: int) -> None:
    """torch.onnx.export (TorchScript) of waveform_module(model) into path: batch, tokens and frames dynamic."""
    import torch

    tokens, frames = 9, 40
    dummy = (torch.ones(1, tokens, dtype=torch.long), torch.ones(1, tokens, dtype=torch.long),
             torch.tensor(0.667), torch.tensor(0.8), torch.tensor(1.0), torch.zeros(1, 2, tokens),
             torch.zeros(1, model.config.flow_size, frames))
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "duration_noise": {0: "batch", 2: "tokens"}, "prior_noise": {0: "batch", 2: "noise_frames"},
            "waveform": {0: "batch", 1: "samples"}, "frames": {0: "batch"}}
    torch.onnx.export(waveform_module(model), dummy, str(path), input_names=list(INPUTS), output_names=list(OUTPUTS),
                      dynamic_axes=axes, opset_version=opset, dynamo=False)
