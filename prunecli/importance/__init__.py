"""Channel importance: what every method measures before the allocator decides.

Scores are per prunable channel group (``{group id: tensor of its channels}``), higher = keep,
computed on the device without host synchronisation so that scoring every step costs little:

- :class:`BNTaylor`: first-order Taylor of the norm after each producer, ``gamma * dL/dgamma +
  beta * dL/dbeta`` (Molchanov CVPR 2019 "Taylor-FO-BN", HALP); groups without a norm fall back
  to :class:`WeightTaylor`.
- :class:`WeightTaylor`: ``sum w * dL/dw`` over the input columns of the group's consumers -- the
  first-order loss change of masking that channel, exactly what prunecli's masks do.
- :func:`bn_scale`: ``|gamma|`` (Network Slimming, CHEX).
- :class:`ActivationTaylor`: the ICLR 2017 criterion ``|mean a * dL/da|`` per sample, via hooks.
- :class:`Accumulator`: latest / momentum / average / sum of scores over steps.
"""

from prunecli.importance.accumulate import Accumulator
from prunecli.importance.activation import ActivationTaylor
from prunecli.importance.norms import NormSlice, bn_scale, norm_slices
from prunecli.importance.taylor import BNTaylor, WeightTaylor, l2_normalise

__all__ = ["Accumulator", "ActivationTaylor", "BNTaylor", "NormSlice", "WeightTaylor",
           "bn_scale", "l2_normalise", "norm_slices"]
