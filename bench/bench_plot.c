/*
 * bench_plot.c: the report as a picture (fab-bench --svg FILE): one horizontal
 * bar per row, its length the ratio to the baseline timed in the same run, a
 * line at 1.0, bars coloured by the acceptance check where there is one (green
 * PASS, red FAIL, blue not checked). Plain SVG, no dependencies; opens in any
 * browser.
 */
#include "bench.h"

#include <math.h>
#include <stdio.h>

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc((unsigned char)*s < 0x20 ? ' ' : *s, f);
        }
    }
}

int bench_write_svg(const char *path, const bench *b, const char *title)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return 1;
    }
    const int label_w = 470, bar_w = 420, row_h = 18, top = 58, right = 70;
    const int width = label_w + bar_w + right, height = top + row_h * (b->nrows > 0 ? b->nrows : 1) + 30;
    /* the scale: at least 0..1.25 so the baseline line sits inside; at most 0..4,
     * longer bars are cut and marked */
    double xmax = 1.25;
    for (int i = 0; i < b->nrows; i++)
        if (isfinite(b->rows[i].ratio) && b->rows[i].ratio * 1.05 > xmax)
            xmax = b->rows[i].ratio * 1.05;
    if (xmax > 4)
        xmax = 4;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"monospace\" "
               "font-size=\"11\">\n",
            width, height);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n<text x=\"8\" y=\"18\" font-size=\"13\">");
    xml_text(f, title);
    fprintf(f, "</text>\n<text x=\"8\" y=\"36\">ratio to the baseline timed in the same run (&gt; 1: faster; "
               "grad_sync rows: exposed share of the goal, &lt;= 1 meets it)</text>\n");
    for (int i = 0; i < b->nrows; i++) {
        const bench_row *r = &b->rows[i];
        const int y = top + i * row_h;
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">", label_w - 6, y + 12);
        char label[200];
        snprintf(label, sizeof label, "%s %s %s %s vs %s", r->suite, r->name, r->shape, r->dtype, r->baseline);
        xml_text(f, label);
        fprintf(f, "</text>\n");
        const char *fill = r->check > 0 ? "#2e7d32" : r->check < 0 ? "#c62828" : "#4a7ab5";
        double v = isfinite(r->ratio) && r->ratio > 0 ? r->ratio : 0;
        double w = (v < xmax ? v : xmax) / xmax * bar_w;
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\"/>\n", label_w, y + 2, w,
                row_h - 4, fill);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\">%.2fx%s%s</text>\n", label_w + w + 4, y + 12, r->ratio,
                v > xmax ? " (cut)" : "", r->check > 0 ? " PASS" : r->check < 0 ? " FAIL" : "");
    }
    const double x1 = label_w + 1.0 / xmax * bar_w;
    fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"black\" stroke-dasharray=\"4 3\"/>\n", x1,
            top - 4, x1, top + row_h * b->nrows + 4);
    fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">1.0 = baseline</text>\n", x1,
            top + row_h * b->nrows + 18);
    if (b->nrows == 0)
        fprintf(f, "<text x=\"8\" y=\"%d\">no rows</text>\n", top + 12);
    fprintf(f, "</svg>\n");
    return fclose(f) != 0;
}
