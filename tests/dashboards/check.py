#!/usr/bin/env python3
"""Checks dashboards/ the way Grafana would use it, against real services.

No Grafana runs on this machine, so this does what Grafana and the ClickHouse data source plugin
do with each query, then runs the result:

* Structure: every dashboard parses, has a current schema (schemaVersion >= 39), unique panel
  ids, panels with a type, a gridPos and targets with a refId (and rawSql / expr), data source
  uids that the provisioning files define, and variables defined before they are used.
* ClickHouse panels: each rawSql is expanded exactly as grafana-clickhouse-datasource v4.13.0
  does it, then run against the test ClickHouse over the events a real run of the service
  wrote; it must succeed, return rows, and return every column the panel reads (``time`` for a
  time series, the fields its overrides and options name). The expansion, in the plugin's
  order:
    1. ``$__conditionalAll(expr, $var)`` — frontend, src/data/CHDatasource.ts
       ``applyConditionalAll``: from the last occurrence backwards, the arguments split at
       top-level commas (``getMacroArgs``); the variable is the second argument's ``$name`` or
       ``${name}``; ``1=1`` when its value is All (``$__all``) or empty, else ``expr``.
    2. Grafana's template variables: ``${var:singlequote}`` -> ``'a','b'`` with each ``'``
       escaped as ``\\'``; ``$var`` / ``${var}`` -> the data source's ``format``: a list as
       ``'a','b'`` (no escaping), a single value as is.
    3. Backend macros, pkg/macros/macros.go: ``$__timeFilter(c)`` -> ``c >= toDateTime(F) AND
       c <= toDateTime(T)``; ``$__timeFilter_ms(c)`` -> ``c >= fromUnixTimestamp64Milli(Fms)
       AND c <= fromUnixTimestamp64Milli(Tms)``; ``$__fromTime`` / ``$__toTime`` ->
       ``toDateTime(F)`` / ``toDateTime(T)``; ``$__fromTime_ms`` / ``$__toTime_ms``;
       ``$__timeInterval(c)`` -> ``toStartOfInterval(toDateTime(c), INTERVAL N second)`` with
       N = max(interval seconds, 1); ``$__interval_s`` -> N; ``$__dateFilter(c)``.
  Each query also runs with explicit brand lists and with a brand containing a quote, which
  must not break it.
* Prometheus panels and the alert rules: every metric they name exists in the service's own
  /metrics output; with ``--prometheus``, every expression runs on a real Prometheus that
  scraped the service (``$__rate_interval`` and ``$__range`` replaced as Grafana does).
* Provisioning: the data sources carry the plugin's jsonData (host, port, protocol, username,
  defaultDatabase) with the password in secureJsonData from an environment variable; the
  dashboard provider is a file provider.

Usage: check.py --dashboards DIR --clickhouse URL --database DB --from S --to S
                [--metrics FILE] [--prometheus URL]
Prints one line per check and exits non-zero if any failed.
"""

import argparse
import glob
import json
import os
import re
import sys
import urllib.parse
import urllib.request

import yaml

PLUGIN = "grafana-clickhouse-datasource"
FAILURES = []


def fail(where, message):
    FAILURES.append(f"{where}: {message}")
    print(f"FAIL {where}: {message}")


# -- the plugin's frontend: $__conditionalAll ---------------------------------------------------

def macro_args(query, args_index):
    """CHDatasource.getMacroArgs: the arguments of the macro whose '(' is at args_index."""
    args, bracket, last = [], 0, 1
    sub = query[args_index:]
    for match in re.finditer(r"\(|\)|,", sub):
        token, end = match.group(0), match.end()
        if token == "(":
            bracket += 1
        elif token == ")":
            bracket -= 1
        if token == "," and bracket == 1:
            args.append(sub[last:end - 1])
            last = end
        if bracket == 0:
            args.append(sub[last:end - 1])
            return args
    return []


def conditional_all(query, values):
    """CHDatasource.applyConditionalAll."""
    macro = "$__conditionalAll("
    index = query.rfind(macro)
    while index != -1:
        params = macro_args(query, index + len(macro) - 1)
        if len(params) != 2:
            return query
        variable = re.search(r"(?<=\$\{)[\w\d]+(?=\})|(?<=\$)[\w\d]+", params[1].strip())
        phrase = params[0]
        if variable:
            value = values.get(variable.group(0))
            # `current.value.toString()`: a JS array joins with ','.
            text = ",".join(value) if isinstance(value, list) else (value or "")
            if text in ("", "$__all"):
                phrase = "1=1"
        query = query.replace(f"{macro}{params[0]},{params[1]})", phrase, 1)
        index = query.rfind(macro)
    return query


# -- Grafana's template service ------------------------------------------------------------------

def resolved(name, values, options):
    value = values[name]
    if value == "$__all" or value == ["$__all"]:
        return list(options[name])
    return value


def template(query, values, options):
    def single_quote(items):
        return ",".join("'" + item.replace("'", "\\'") + "'" for item in items)

    def format_default(value):
        if isinstance(value, list):
            return "'" + "','".join(value) + "'"
        return value

    def braced(match):
        name, fmt = match.group(1), match.group(2)
        if name not in values:
            return match.group(0)
        value = resolved(name, values, options)
        items = value if isinstance(value, list) else [value]
        if fmt == "singlequote":
            return single_quote(items)
        if fmt is None:
            return format_default(value)
        raise ValueError(f"variable format {fmt!r} not handled by this checker")

    query = re.sub(r"\$\{(\w+)(?::(\w+))?\}", braced, query)

    def bare(match):
        name = match.group(1)
        if name.startswith("__") or name not in values:
            return match.group(0)
        return format_default(resolved(name, values, options))

    return re.sub(r"\$(\w+)", bare, query)


# -- the plugin's backend macros -----------------------------------------------------------------

def backend_macros(query, start, end, interval_s):
    n = max(int(interval_s), 1)
    macros = {
        "timeFilter": lambda c: f"{c} >= toDateTime({start}) AND {c} <= toDateTime({end})",
        "timeFilter_ms": lambda c: f"{c} >= fromUnixTimestamp64Milli({start * 1000}) AND "
                                   f"{c} <= fromUnixTimestamp64Milli({end * 1000})",
        "dateFilter": lambda c: f"{c} >= toDate('{day(start)}') AND {c} <= toDate('{day(end)}')",
        "timeInterval": lambda c: f"toStartOfInterval(toDateTime({c}), INTERVAL {n} second)",
        "timeInterval_ms": lambda c: f"toStartOfInterval(toDateTime64({c}, 3), INTERVAL {n * 1000} millisecond)",
    }
    plain = {
        "fromTime": f"toDateTime({start})",
        "toTime": f"toDateTime({end})",
        "fromTime_ms": f"fromUnixTimestamp64Milli({start * 1000})",
        "toTime_ms": f"fromUnixTimestamp64Milli({end * 1000})",
        "interval_s": str(n),
    }

    def expand(match):
        name, args = match.group(1), match.group(2)
        if args is not None and name in macros:
            return macros[name](args.strip())
        if name in plain:
            return plain[name] + (f"({args})" if args is not None else "")
        raise ValueError(f"unknown macro $__{name}")

    return re.sub(r"\$__(\w+)\b(?:\(([^()]*)\))?", expand, query)


def day(seconds):
    import datetime
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d")


def expand(sql, values, options, start, end, interval_s):
    sql = conditional_all(sql, values)
    sql = template(sql, values, options)
    sql = backend_macros(sql, start, end, interval_s)
    leftover = re.findall(r"\$\{?\w+", sql)
    if leftover:
        raise ValueError(f"unexpanded {leftover}")
    return sql


# -- ClickHouse and Prometheus -------------------------------------------------------------------

def clickhouse(url, database, sql):
    """The rows of `sql` as dicts, and the column names (JSON output format)."""
    request = urllib.request.Request(
        f"{url}/?database={urllib.parse.quote(database)}&default_format=JSON",
        data=(sql + "\nFORMAT JSON").encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise RuntimeError(error.read().decode(errors="replace")[:600]) from None
    return body.get("data", []), [column["name"] for column in body.get("meta", [])]


def prometheus(url, expr):
    query = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=30) as response:
        return json.loads(response.read())


def metric_names(expr):
    names = set()
    for name in re.findall(r"\borderguard_[a-z0-9_]+", expr):
        names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


# -- what a panel reads --------------------------------------------------------------------------

def columns_read(panel, target):
    """The result columns a panel cannot do without."""
    columns = set()
    if target.get("queryType") == "timeSeries" or target.get("format") == 0:
        columns.add("time")
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        matcher = override.get("matcher", {})
        if matcher.get("id") == "byName":
            columns.add(matcher["options"])
    options = panel.get("options", {})
    if "xField" in options:
        columns.add(options["xField"])
    fields = options.get("reduceOptions", {}).get("fields", "")
    if fields.startswith("/^") and fields.endswith("$/"):
        columns.add(fields[2:-2])
    return columns


def variables_of(dashboard):
    return [v for v in dashboard.get("templating", {}).get("list", [])]


def check_structure(name, dashboard, uids):
    where = name
    if dashboard.get("schemaVersion", 0) < 39:
        fail(where, f"schemaVersion {dashboard.get('schemaVersion')} < 39")
    for key in ("uid", "title", "panels"):
        if not dashboard.get(key):
            fail(where, f"no {key}")
    defined = []
    for variable in variables_of(dashboard):
        used = set(re.findall(r"\$\{?(\w+)", variable.get("query", "") if isinstance(variable.get("query"), str) else json.dumps(variable.get("query"))))
        for ref in used:
            if not ref.startswith("__") and ref not in defined:
                fail(where, f"variable {variable['name']} uses ${ref} before it is defined")
        defined.append(variable["name"])
        if variable.get("datasource", {}).get("uid") not in uids:
            fail(where, f"variable {variable['name']}: data source uid not provisioned")
    ids = [panel.get("id") for panel in dashboard["panels"]]
    if len(ids) != len(set(ids)) or None in ids:
        fail(where, f"panel ids not unique: {ids}")
    cells = set()
    for panel in dashboard["panels"]:
        where = f"{name} / {panel.get('title')}"
        if not panel.get("type"):
            fail(where, "no type")
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")) or grid["x"] + grid["w"] > 24:
            fail(where, f"bad gridPos {grid}")
        else:
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    if (x, y) in cells:
                        fail(where, "overlaps another panel")
                        break
                    cells.add((x, y))
        if not panel.get("description"):
            fail(where, "no description for the analyst")
        if panel.get("datasource", {}).get("uid") not in uids:
            fail(where, f"data source uid {panel.get('datasource')} not provisioned")
        targets = panel.get("targets") or []
        if not targets:
            fail(where, "no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            fail(where, f"refIds {refs}")
        for target in targets:
            source = target.get("datasource", panel.get("datasource", {}))
            if source.get("uid") not in uids:
                fail(where, f"target data source uid {source} not provisioned")
            if source.get("type") == PLUGIN:
                if not target.get("rawSql") or target.get("editorType") != "sql" \
                        or target.get("format") not in (0, 1) \
                        or target.get("queryType") not in ("timeSeries", "table"):
                    fail(where, "a ClickHouse target needs rawSql, editorType sql, format and queryType")
                for ref in re.findall(r"\$\{?(\w+)", target.get("rawSql", "")):
                    if not ref.startswith("__") and ref not in defined:
                        fail(where, f"uses ${ref}, which no variable defines")
            elif not target.get("expr"):
                fail(where, "a Prometheus target needs expr")


def check_provisioning(directory):
    uids = {}
    for path in glob.glob(os.path.join(directory, "provisioning", "datasources", "*.yaml")):
        for source in yaml.safe_load(open(path)).get("datasources", []):
            uids[source["uid"]] = source["type"]
            where = f"{os.path.basename(path)} / {source['name']}"
            if source["type"] == PLUGIN:
                data = source.get("jsonData", {})
                for key in ("host", "port", "protocol", "username", "defaultDatabase"):
                    if key not in data:
                        fail(where, f"jsonData lacks {key}")
                password = source.get("secureJsonData", {}).get("password", "")
                if not re.fullmatch(r"\$\{?[A-Z_]+\}?", str(password)):
                    fail(where, "the password must come from an environment variable")
            elif source["type"] == "prometheus" and not source.get("url"):
                fail(where, "no url")
    providers = []
    for path in glob.glob(os.path.join(directory, "provisioning", "dashboards", "*.yaml")):
        providers += yaml.safe_load(open(path)).get("providers", [])
    if not any(p.get("type") == "file" and p.get("options", {}).get("path") for p in providers):
        fail("provisioning/dashboards", "no file dashboard provider")
    print(f"ok   provisioning: data sources {sorted(uids)}, {len(providers)} dashboard provider(s)")
    return uids


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dashboards", required=True)
    parser.add_argument("--clickhouse", required=True)
    parser.add_argument("--database", default="orderguard")
    parser.add_argument("--from", dest="start", type=int, required=True)
    parser.add_argument("--to", dest="end", type=int, required=True)
    parser.add_argument("--interval", type=int, default=60)
    parser.add_argument("--metrics")
    parser.add_argument("--prometheus")
    args = parser.parse_args()

    uids = check_provisioning(args.dashboards)
    exposed = set()
    if args.metrics:
        for line in open(args.metrics):
            if line.startswith("# TYPE "):
                exposed.add(line.split()[2])
    queries = 0
    for path in sorted(glob.glob(os.path.join(args.dashboards, "*.json"))):
        name = os.path.basename(path)
        try:
            dashboard = json.load(open(path))
        except ValueError as error:
            fail(name, f"does not parse: {error}")
            continue
        check_structure(name, dashboard, uids)
        variables = variables_of(dashboard)
        options = {}
        for variable in variables:
            rows, columns = clickhouse(args.clickhouse, args.database, variable["query"])
            options[variable["name"]] = [str(row[columns[0]]) for row in rows]
            if not rows:
                fail(f"{name} / ${variable['name']}", "the variable's query returned no values")
        # The selections each query runs under: All; explicit lists; a brand with a quote.
        selections = [{v["name"]: ("$__all" if v.get("multi") else options[v["name"]][:1]) for v in variables}]
        if variables:
            explicit = {v["name"]: options[v["name"]][:2] if v.get("multi") else options[v["name"]][-1:] for v in variables}
            quoted = dict(selections[0], brand=["o'brien"] if any(v["name"] == "brand" and v.get("multi") for v in variables) else "o'brien")
            selections += [explicit, quoted]
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                where = f"{name} / {panel['title']} / {target['refId']}"
                if "rawSql" in target:
                    for index, values in enumerate(selections):
                        try:
                            sql = expand(target["rawSql"], values, options, args.start, args.end, args.interval)
                            rows, columns = clickhouse(args.clickhouse, args.database, sql)
                        except (ValueError, RuntimeError) as error:
                            fail(where, f"selection {values}: {error}")
                            continue
                        queries += 1
                        if index == 0:
                            missing = columns_read(panel, target) - set(columns)
                            if missing:
                                fail(where, f"returns {columns}, lacks {sorted(missing)}")
                            if not rows:
                                fail(where, "no rows on the run's events")
                            else:
                                print(f"ok   {where}: {len(rows)} rows, columns {columns}")
                else:
                    names = metric_names(target["expr"])
                    if args.metrics and names - exposed:
                        fail(where, f"metrics not in /metrics: {sorted(names - exposed)}")
                    if args.prometheus:
                        expr = target["expr"].replace("$__rate_interval", "5m").replace("$__range", "10m")
                        answer = prometheus(args.prometheus, expr)
                        if answer.get("status") != "success":
                            fail(where, f"Prometheus: {answer}")
                        elif not answer["data"]["result"]:
                            fail(where, f"no series from the scraped service: {expr}")
                        else:
                            queries += 1
                            print(f"ok   {where}: {len(answer['data']['result'])} series")
    for path in sorted(glob.glob(os.path.join(args.dashboards, "alerts", "*.rules.yml"))):
        for group in yaml.safe_load(open(path))["groups"]:
            for rule in group["rules"]:
                where = f"{os.path.basename(path)} / {rule['alert']}"
                names = metric_names(rule["expr"])
                if not names:
                    fail(where, "names no orderguard metric")
                if args.metrics and names - exposed:
                    fail(where, f"metrics not in /metrics: {sorted(names - exposed)}")
                if args.prometheus:
                    answer = prometheus(args.prometheus, rule["expr"])
                    if answer.get("status") != "success":
                        fail(where, f"Prometheus: {answer}")
                    else:
                        queries += 1
                print(f"ok   {where}: metrics {sorted(names)}")
    print(f"{queries} queries run, {len(FAILURES)} failures")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
