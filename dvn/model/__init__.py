"""The model layer: sliced modules, the selection of a (task, level), backbones, and the tools
that turn whole models into DVNs and back.

- ``units`` (unit layouts), ``networks`` (virtual networks, ``Active``, ``selected`` and the one
  ``resolve`` every sliced layer calls), ``layouts`` (whole-group unit layouts of a network)
- layers: ``conv`` (``SlicedConv2d``), ``norm`` (per-level batch norm), ``heads``, ``shortcuts``
- ``backbones`` (the paper's WRN and ResNet), ``twin`` (the masked twin, the speed baseline)
- whole models: ``convert`` (torchvision models to DVNs), ``export`` (a level as a static
  model), ``capture`` (compiled configurations), ``calibration`` (batch norm statistics)

The public names are re-exported by ``dvn``.
"""
