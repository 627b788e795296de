"""Recover the [B, L] padding mask from the attention mask Hugging Face v5 hands to a BERT encoder."""
from __future__ import annotations

import torch
from torch import Tensor


def padding_mask_from_hf(attention_mask: Tensor | None, hidden_states: Tensor, check_rows: bool = True) -> Tensor:
    """The keys each example may attend to, as a [B, L] bool mask (True for real tokens).

    Args:
        attention_mask: what `BertModel` passes its encoder: None (no padding), a [B, 1|H, L, L] bool mask
            (True = attend, sdpa), a [B, 1|H, L, L] additive float mask (0 = attend, large negative = masked,
            eager), or a plain [B, L] mask (nonzero = real token).
        hidden_states: [B, L, D] encoder input, for the shape and device.
        check_rows: raise ValueError for an example without a real token. The check reads the mask on the host
            (a device synchronisation), so the static-shape path turns it off and poisons such examples instead.

    Returns:
        [B, L] bool.
    """
    batch, length = hidden_states.shape[:2]
    if attention_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=hidden_states.device)
    if not isinstance(attention_mask, Tensor):
        raise ValueError(
            "the dynamic encoder needs a tensor attention mask (attn_implementation 'eager' or 'sdpa'), "
            f"got {type(attention_mask).__name__}"
        )
    if attention_mask.dim() == 2:
        valid = attention_mask != 0
    elif attention_mask.dim() == 4:
        if attention_mask.dtype == torch.bool:
            attend = attention_mask
        elif attention_mask.is_floating_point():
            # Additive masks hold 0 where attention is allowed and the dtype's minimum (or -inf) elsewhere.
            attend = attention_mask > torch.finfo(attention_mask.dtype).min / 2
        else:
            attend = attention_mask != 0
        # A key is a real token when any query of any head may attend to it; padding query rows, which
        # some mask builders blank out, then do not hide real keys.
        valid = attend.any(dim=2).any(dim=1)
    else:
        raise ValueError(
            f"expected an attention mask of shape [B, L] or [B, 1, L, L], got {tuple(attention_mask.shape)}"
        )
    if valid.shape[0] == 1 and batch > 1 and valid.shape[1] == length:
        valid = valid.expand(batch, length)
    if valid.shape != (batch, length):
        raise ValueError(
            f"the attention mask covers {tuple(valid.shape)} (batch, keys) but the hidden states are "
            f"{(batch, length)}"
        )
    if check_rows and not bool(valid.any(dim=1).all()):
        raise ValueError("every example needs at least one real token; the attention mask has an all-padding row")
    return valid
