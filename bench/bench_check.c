/*
 * bench_check.c: acceptance thresholds (fab-bench --check FILE).
 *
 * A thresholds file holds one rule per line, five fields separated by '|':
 *
 *   # suite | op           | shape          | dtype | check
 *   matmul  | square       | 4096x4096x4096 | bf16  | ratio >= 0.70
 *   comm    | grad_sync*   | *              | *     | rate <= 10
 *
 * The first four are shell globs (fnmatch) on the row's suite, op, shape and
 * dtype columns; the check is a metric (ratio, rate, base_rate or ms), >= or <=,
 * and a number. Every row a rule matches must meet it. A rule that matches no
 * row fails too: a requirement the run did not measure is not met. '#' starts a
 * comment; blank lines are skipped.
 */
#include "bench.h"

#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const metric_names[] = {"ratio", "rate", "base_rate", "ms"};

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = 0;
    return s;
}

/* Parses one non-empty rule line into r; returns an error message or NULL. */
static const char *parse_rule(char *line, bench_rule *r)
{
    char *field[5];
    int n = 0;
    field[n++] = line;
    for (char *p = line; *p; p++)
        if (*p == '|') {
            *p = 0;
            if (n == 5)
                return "more than 5 fields (suite | op | shape | dtype | check)";
            field[n++] = p + 1;
        }
    if (n != 5)
        return "fewer than 5 fields (suite | op | shape | dtype | check)";
    char *pat[4] = {trim(field[0]), trim(field[1]), trim(field[2]), trim(field[3])};
    char *dst[4] = {r->suite, r->name, r->shape, r->dtype};
    for (int i = 0; i < 4; i++) {
        if (!*pat[i])
            return "an empty pattern (write * to match anything)";
        if (strlen(pat[i]) >= sizeof r->suite)
            return "a pattern longer than 63 characters";
        strcpy(dst[i], pat[i]);
    }
    char metric[16], op[4];
    int used = 0;
    const char *check = trim(field[4]);
    if (sscanf(check, "%15s %3s %n", metric, op, &used) != 2)
        return "the check must read \"METRIC >= VALUE\" or \"METRIC <= VALUE\"";
    r->metric = -1;
    for (int i = 0; i < (int)(sizeof metric_names / sizeof metric_names[0]); i++)
        if (!strcmp(metric, metric_names[i]))
            r->metric = i;
    if (r->metric < 0)
        return "the metric must be ratio, rate, base_rate or ms";
    if (strcmp(op, ">=") && strcmp(op, "<="))
        return "the comparison must be >= or <=";
    r->at_most = op[0] == '<';
    const char *num = check + used;
    char *end;
    errno = 0;
    r->limit = strtod(num, &end);
    if (end == num || *trim(end) || errno)
        return "the limit must be a number";
    return NULL;
}

int bench_check_load(bench_check *c, const char *path)
{
    memset(c, 0, sizeof *c);
    c->path = path;
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        return 1;
    }
    char line[512];
    int lineno = 0, bad = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            fprintf(stderr, "fab-bench: %s:%d: line longer than %zu characters\n", path, lineno, sizeof line - 2);
            bad = 1;
            break;
        }
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        char *text = trim(line);
        if (!*text)
            continue;
        if (c->nrules == c->cap) {
            int cap = c->cap ? 2 * c->cap : 16;
            bench_rule *rules = realloc(c->rules, (size_t)cap * sizeof *rules);
            if (!rules) {
                fprintf(stderr, "fab-bench: %s: out of memory\n", path);
                bad = 1;
                break;
            }
            c->rules = rules, c->cap = cap;
        }
        bench_rule *r = &c->rules[c->nrules];
        memset(r, 0, sizeof *r);
        r->line = lineno;
        const char *why = parse_rule(text, r);
        if (why) {
            fprintf(stderr, "fab-bench: %s:%d: %s\n", path, lineno, why);
            bad = 1;
            break;
        }
        c->nrules++;
    }
    fclose(f);
    if (!bad && c->nrules == 0) {
        fprintf(stderr, "fab-bench: %s: no rules (a check that checks nothing would always pass)\n", path);
        bad = 1;
    }
    if (bad)
        bench_check_free(c);
    return bad;
}

void bench_check_free(bench_check *c)
{
    free(c->rules);
    c->rules = NULL;
    c->nrules = c->cap = 0;
}

static double metric_of(const bench_row *row, int metric)
{
    switch (metric) {
    case 0: return row->ratio;
    case 1: return row->rate;
    case 2: return row->baseline_rate;
    default: return row->ms;
    }
}

static int matches(const bench_rule *r, const bench_row *row)
{
    return !fnmatch(r->suite, row->suite, 0) && !fnmatch(r->name, row->name, 0) &&
           !fnmatch(r->shape, row->shape, 0) && !fnmatch(r->dtype, row->dtype, 0);
}

static int meets(const bench_rule *r, double v)
{
    /* NaN (a row without its baseline) meets nothing */
    return r->at_most ? v <= r->limit : v >= r->limit;
}

int bench_check_apply(bench_check *c, bench *b)
{
    int failed = 0;
    for (int i = 0; i < b->nrows; i++)
        b->rows[i].check = 0;
    for (int k = 0; k < c->nrules; k++) {
        bench_rule *r = &c->rules[k];
        r->matched = r->failed = 0;
        for (int i = 0; i < b->nrows; i++) {
            bench_row *row = &b->rows[i];
            if (!matches(r, row))
                continue;
            r->matched++;
            if (meets(r, metric_of(row, r->metric))) {
                if (row->check == 0)
                    row->check = 1;
            } else {
                r->failed++;
                row->check = -1;
            }
        }
        failed += r->matched == 0 || r->failed > 0;
    }
    c->failed_rules = failed;
    return failed;
}

void bench_check_print(const bench_check *c, const bench *b, FILE *f)
{
    int checked = 0, passed = 0;
    for (int i = 0; i < b->nrows; i++) {
        checked += b->rows[i].check != 0;
        passed += b->rows[i].check > 0;
    }
    fprintf(f, "\nacceptance (%s): %d rule%s, %d failed; %d row%s checked: %d PASS, %d FAIL\n", c->path, c->nrules,
            c->nrules == 1 ? "" : "s", c->failed_rules, checked, checked == 1 ? "" : "s", passed, checked - passed);
    for (int k = 0; k < c->nrules; k++) {
        const bench_rule *r = &c->rules[k];
        const char *cmp = r->at_most ? "<=" : ">=";
        if (r->matched == 0) {
            fprintf(f, "FAIL %s:%d: %s | %s | %s | %s | %s %s %g: matched no row (not measured in this run)\n",
                    c->path, r->line, r->suite, r->name, r->shape, r->dtype, metric_names[r->metric], cmp, r->limit);
            continue;
        }
        for (int i = 0; i < b->nrows && r->failed; i++) {
            const bench_row *row = &b->rows[i];
            double v = metric_of(row, r->metric);
            if (matches(r, row) && !meets(r, v))
                fprintf(f, "FAIL %s:%d: %s %s %s %s: %s %.4g, needs %s %g\n", c->path, r->line, row->suite,
                        row->name, row->shape, row->dtype, metric_names[r->metric], v, cmp, r->limit);
        }
    }
}
