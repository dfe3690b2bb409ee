/* pyfloat.c -- Python's repr() of a float, for json.dumps and repr output.
 *
 * Python prints the shortest digit string that reads back to the same double
 * (David Gay's mode 0), switching to exponent form when the decimal exponent
 * is < -4 or >= 16: 0.1, 1e-05, 1e+16, 1000000000000000.0. glibc's %.*e is
 * correctly rounded, so trying precisions 1..17 finds the same digits.
 * No I/O; any process.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Whether v printed to prec significant digits (into tmp) reads back as v. */
static int round_trips(double v, int prec, char *tmp, size_t len) {
    snprintf(tmp, len, "%.*e", prec - 1, v);
    return strtod(tmp, NULL) == v;
}

/* Finds the shortest round-trip digits of |v| (> 0, finite): digits into
 * dig (NUL-terminated, no trailing zeros), returns decpt such that
 * |v| = 0.d1d2... * 10^decpt.
 *
 * Round-tripping is monotone in the precision when v's rounding interval is
 * symmetric: the correctly rounded prec+1 digits are at least as close to v as
 * the prec digits (which are prec+1 digits with a 0 appended). So the shortest
 * precision is found by bisection over 1..17 (17 always round-trips): 4-5
 * conversions instead of up to 17. A power of two has a narrower interval
 * below it than above, where closer is not enough; those keep the plain scan. */
static int shortest_digits(double v, char *dig) {
    char tmp[40];
    int e2;
    if (frexp(v, &e2) == 0.5) {
        for (int prec = 1; prec <= 17; prec++)
            if (round_trips(v, prec, tmp, sizeof(tmp)) || prec == 17) break;
    } else {
        int lo = 1, hi = 17; /* the answer is in [lo, hi]; hi round-trips */
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (round_trips(v, mid, tmp, sizeof(tmp))) hi = mid;
            else lo = mid + 1;
        }
        snprintf(tmp, sizeof(tmp), "%.*e", hi - 1, v);
    }
    /* tmp is d[.ddd]e[+-]XX */
    size_t n = 0;
    const char *p = tmp;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') dig[n++] = *p;
    while (n > 1 && dig[n - 1] == '0') n--;
    dig[n] = '\0';
    int exp10 = (*p == 'e') ? atoi(p + 1) : 0;
    return exp10 + 1;
}

size_t cel_pyfloat_format(double v, char *out) {
    if (isnan(v)) return (size_t)snprintf(out, CEL_PYFLOAT_MAX, "nan");
    if (isinf(v)) return (size_t)snprintf(out, CEL_PYFLOAT_MAX, v < 0 ? "-inf" : "inf");
    char *o = out;
    if (signbit(v)) {
        *o++ = '-';
        v = -v;
    }
    if (v == 0.0) {
        strcpy(o, "0.0");
        return (size_t)(o - out) + 3;
    }
    char dig[24];
    int decpt = shortest_digits(v, dig);
    int nd = (int)strlen(dig);
    if (decpt <= -4 || decpt > 16) {
        *o++ = dig[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, dig + 1, (size_t)nd - 1);
            o += nd - 1;
        }
        int e = decpt - 1;
        o += sprintf(o, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    } else if (decpt <= 0) {
        *o++ = '0';
        *o++ = '.';
        for (int i = 0; i < -decpt; i++) *o++ = '0';
        memcpy(o, dig, (size_t)nd);
        o += nd;
    } else if (decpt >= nd) {
        memcpy(o, dig, (size_t)nd);
        o += nd;
        for (int i = nd; i < decpt; i++) *o++ = '0';
        *o++ = '.';
        *o++ = '0';
    } else {
        memcpy(o, dig, (size_t)decpt);
        o += decpt;
        *o++ = '.';
        memcpy(o, dig + decpt, (size_t)(nd - decpt));
        o += nd - decpt;
    }
    *o = '\0';
    return (size_t)(o - out);
}
