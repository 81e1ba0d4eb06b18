"""What the benchmark scripts share; none of these modules is a script of its own.

``args``          argument checks every script applies (counts, zoo names, output folders);
``timing``        ``Timed`` items, interleaved rounds and runners with the SDK backends'
                  settings;
``speed_report``  ``benchmarks/speed.py``'s figures, headline ratios and tables.
"""
