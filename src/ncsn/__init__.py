"""ncsn: score-based generative modeling (score matching, Langevin dynamics, NCSN).

Where things are:

* objectives: :mod:`ncsn.losses` (explicit, exact, sliced and denoising score matching, NCSN's
  multi-scale objective, DDPM's L_simple), :mod:`ncsn.energy` (energy models, s = -grad E), :mod:`ncsn.score`
  (the calling convention of score functions);
* forward processes and noise levels: :mod:`ncsn.processes` (VE, VP), :mod:`ncsn.sigmas`;
* samplers: :mod:`ncsn.sampling` (:mod:`ncsn.sampling.langevin`, :mod:`ncsn.sampling.diffusion`,
  :mod:`ncsn.sampling.ode`), :mod:`ncsn.generate` (a trained model's configured sampler);
* likelihoods: :mod:`ncsn.likelihood`, :mod:`ncsn.solvers`;
* networks: :mod:`ncsn.models` (:mod:`ncsn.models.refinenet`, :mod:`ncsn.models.ncsnv2`,
  :mod:`ncsn.models.unet`, :mod:`ncsn.models.mlp`, :mod:`ncsn.models.score_model`), built from configs by
  :mod:`ncsn.build`;
* data: :mod:`ncsn.data.toy` (2-D toys with exact scores), :mod:`ncsn.data.images`;
* training: :mod:`ncsn.train`, :mod:`ncsn.config`, :mod:`ncsn.checkpoint`, :mod:`ncsn.distributed`;
* evaluation: :mod:`ncsn.metrics` (:mod:`ncsn.metrics.maths`, :mod:`ncsn.metrics.features`,
  :mod:`ncsn.metrics.toy`), :mod:`ncsn.evaluation`;
* experiments: :mod:`ncsn.toy` (NCSN's Figure 3), :mod:`ncsn.experiments.pitfalls`,
  :mod:`ncsn.experiments.compare`, :mod:`ncsn.experiments.reproduce`;
* the command line: :mod:`ncsn.cli`, :mod:`ncsn.commands`.

The tutorial (``docs/tutorial.ipynb``) walks through them in the order of the material.
"""

__version__ = "0.1.0"
