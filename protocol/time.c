/* time.c -- ISO-8601 times as Celery writes them, to and from unix seconds.
 *
 * Parses eta/expires ("2026-11-22T21:14:16.013988+00:00", "...Z", naive taken
 * as UTC) and formats date_done the way datetime.utcfromtimestamp(t).isoformat()
 * does (naive, microseconds only when non-zero, rounded half-even as Python).
 * Pure calendar arithmetic, no libc time zones. No I/O; any process.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Years outside this range are refused: keeps the arithmetic exact. */
#define TIME_YEAR_MIN 1
#define TIME_YEAR_MAX 9999

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static long long days_from_civil(long long y, unsigned m, unsigned d) {
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static void civil_from_days(long long z, int *y, unsigned *m, unsigned *d) {
    z += 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long yy = (long long)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int)(yy + (*m <= 2));
}

/* Reads exactly n digits at *p. Returns -1 if they are not all digits. */
static int digits(const char **p, int n) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9') return -1;
        v = v * 10 + (c - '0');
    }
    *p += n;
    return v;
}

static int days_in_month(int y, int m) {
    static const int dm[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 ? 28 + leap : dm[m - 1];
}

/* Parses Celery's ISO-8601 (see protocol.h). CEL_EPROTO with a message on
 * anything else: date-only, bad fields, trailing junk. */
int cel_time_parse_iso8601(const char *s, double *out, cel_err_t *err) {
    const char *p = s;
    if (!s) return cel_err_set(err, CEL_EPROTO, "no time given");
    int y = digits(&p, 4);
    if (y < 0 || *p++ != '-') goto bad;
    int mo = digits(&p, 2);
    if (mo < 0 || *p++ != '-') goto bad;
    int d = digits(&p, 2);
    if (d < 0 || (*p != 'T' && *p != 't' && *p != ' ')) goto bad;
    p++;
    int h = digits(&p, 2);
    if (h < 0 || *p++ != ':') goto bad;
    int mi = digits(&p, 2);
    if (mi < 0) goto bad;
    int sec = 0;
    double frac = 0.0;
    if (*p == ':') {
        p++;
        sec = digits(&p, 2);
        if (sec < 0) goto bad;
        if (*p == '.' || *p == ',') {
            p++;
            char fr[16] = "0.";
            int nd = 0;
            while (*p >= '0' && *p <= '9') {
                if (nd < 9) /* more than nanoseconds is noise */
                    fr[2 + nd] = *p;
                nd++;
                p++;
            }
            fr[2 + (nd < 9 ? nd : 9)] = '\0';
            frac = strtod(fr, NULL);
            if (nd == 0) goto bad;
        }
    }
    long off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1;
        int oh = digits(&p, 2);
        if (oh < 0) goto bad;
        if (*p == ':') p++;
        int om = 0;
        if (*p >= '0' && *p <= '9') {
            om = digits(&p, 2);
            if (om < 0) goto bad;
        }
        if (oh > 23 || om > 59) goto bad;
        off = sign * (oh * 3600L + om * 60L);
    }
    if (*p != '\0') goto bad;
    if (y < TIME_YEAR_MIN || y > TIME_YEAR_MAX || mo < 1 || mo > 12 || d < 1 ||
        d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59)
        goto bad;
    long long days = days_from_civil(y, (unsigned)mo, (unsigned)d);
    long long secs = days * 86400 + h * 3600LL + mi * 60LL + sec - off;
    *out = (double)secs + frac;
    return CEL_OK;
bad:
    return cel_err_set(err, CEL_EPROTO, "not an ISO-8601 date and time: '%.64s'", s);
}

/* Splits t into whole seconds and microseconds as Python's
 * datetime.utcfromtimestamp does (round half to even). */
static int split_time(double t, long long *secs, long *us) {
    if (!isfinite(t) || t < -62135596800.0 || t > 253402300799.0) return -1;
    double ip;
    double frac = modf(t, &ip);
    double r = nearbyint(frac * 1e6);
    long long s = (long long)ip;
    long u = (long)r;
    if (u >= 1000000) {
        s += 1;
        u -= 1000000;
    } else if (u < 0) {
        s -= 1;
        u += 1000000;
    }
    *secs = s;
    *us = u;
    return 0;
}

static char *format_time(double t, char *buf, size_t size, const char *suffix) {
    long long s;
    long us;
    if (size == 0) return buf;
    if (split_time(t, &s, &us) < 0) {
        snprintf(buf, size, "1970-01-01T00:00:00%s", suffix);
        return buf;
    }
    long long days = s >= 0 ? s / 86400 : -((-s + 86399) / 86400);
    long long rem = s - days * 86400;
    int y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    int hh = (int)(rem / 3600), mm = (int)(rem % 3600 / 60), ss = (int)(rem % 60);
    if (us)
        snprintf(buf, size, "%04d-%02u-%02uT%02d:%02d:%02d.%06ld%s", y, m, d, hh, mm, ss, us,
                 suffix);
    else snprintf(buf, size, "%04d-%02u-%02uT%02d:%02d:%02d%s", y, m, d, hh, mm, ss, suffix);
    return buf;
}

/* Python's datetime.utcfromtimestamp(t).isoformat(). Out-of-range times
 * print as the epoch. Returns buf. */
char *cel_time_format_iso8601(double t, char *buf, size_t size) {
    return format_time(t, buf, size, "");
}

/* The same with "+00:00", as an aware UTC datetime's isoformat(). */
char *cel_time_format_iso8601_utc(double t, char *buf, size_t size) {
    return format_time(t, buf, size, "+00:00");
}
