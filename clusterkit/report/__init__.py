"""``clusterkit report``: a static, self-contained HTML gallery of inference runs, side by side.

``sources`` reads what the jobs wrote (indexes, results, sweep records) into columns;
``gallery`` matches their videos into rows; ``media`` places the files and their posters;
``page`` renders the HTML (pure); ``build`` puts it all in one folder, atomically.
"""
