"""The dashboard pages: one module each (named as its URL path), each with `render(ctx)`."""

# (module and URL path, title, icon), in the order of the navigation.
PAGES = (
    ("overview", "Overview", ":material/home:"),
    ("utilization", "Utilization", ":material/grid_on:"),
    ("conflicts", "Conflicts", ":material/block:"),
    ("holds", "Holds funnel", ":material/filter_alt:"),
    ("loadtests", "Load tests", ":material/speed:"),
    ("dst", "DST", ":material/schedule:"),
)
