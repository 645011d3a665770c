"""Reports: `write_report(dir)` turns a run or sweep directory into report.html, figures,
Markdown tables, CodeCarbon's emissions.csv and a model-card CO2 block."""
