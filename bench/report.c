/* report.c - percentiles of one run, median/min/max over a run-set. */
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_pct(double *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, cmp_double);
    /* nearest rank: the smallest value with at least p% of the values <= it */
    double rank = p / 100.0 * (double)n;
    size_t i = (size_t)rank;
    if ((double)i < rank)
        i++;
    if (i < 1)
        i = 1;
    if (i > n)
        i = n;
    return v[i - 1];
}

bench_mmm bench_summary(const double *v, int n)
{
    bench_mmm s = {0, 0, 0};
    if (n <= 0)
        return s;
    double *c = malloc((size_t)n * sizeof *c);
    if (!c)
        return s;
    memcpy(c, v, (size_t)n * sizeof *c);
    qsort(c, (size_t)n, sizeof *c, cmp_double);
    s.min = c[0];
    s.max = c[n - 1];
    s.median = n % 2 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2.0;
    free(c);
    return s;
}
