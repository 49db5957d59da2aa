"""The embedded MVTec-layout benchmark generator (`moleflow synth`).

`benchmark.py` drives it (generate_benchmark, the class table, defect size/contrast ranges); one module per
class (`leather.py`, `metal_nut.py`, ...) renders that class and its defects; `draw.py` and `window.py` hold the
shared drawing primitives. Deliberately free of imports, so importing one module of it stays cheap.
"""
