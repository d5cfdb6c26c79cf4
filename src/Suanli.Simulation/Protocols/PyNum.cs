using System.Numerics;

namespace Suanli.Simulation.Protocols;

/// <summary>
/// Python and numpy numerics needed to reproduce published analysis scripts digit for digit: Python's correctly
/// rounded <c>round(x, n)</c> (half to even on the exact binary value) and numpy's pairwise summation.
/// </summary>
public static class PyNum
{
    /// <summary>Python's <c>round(x, digits)</c> for finite x and 0 ≤ digits ≤ 15: exact half-to-even decimal rounding.</summary>
    public static double Round(double x, int digits)
    {
        if (!double.IsFinite(x) || x == 0)
        {
            return x;
        }

        // x = mantissa * 2^exp exactly; compare x * 10^digits with the nearest integers in exact rational arithmetic.
        var bits = BitConverter.DoubleToInt64Bits(x);
        var negative = bits < 0;
        var exp = (int)((bits >> 52) & 0x7FF);
        var frac = bits & 0xFFFFFFFFFFFFFL;
        BigInteger mant = exp == 0 ? frac : frac | (1L << 52);
        exp = (exp == 0 ? 1 : exp) - 1075;
        var scale = BigInteger.Pow(10, digits);
        BigInteger num = mant * scale, den = BigInteger.One;
        if (exp >= 0)
        {
            num <<= exp;
        }
        else
        {
            den <<= -exp;
        }

        var q = BigInteger.DivRem(num, den, out var rem);
        var twice = rem * 2;
        if (twice > den || (twice == den && !q.IsEven))
        {
            q += 1;
        }

        var result = double.Parse($"{q}E-{digits}", System.Globalization.CultureInfo.InvariantCulture);
        return negative ? -result : result;
    }

    /// <summary>numpy's pairwise sum of float64 (blocks of 128, 8-way unrolled), as used by <c>ndarray.sum</c> and pandas' mean.</summary>
    public static double PairwiseSum(ReadOnlySpan<double> a)
    {
        var n = a.Length;
        if (n < 8)
        {
            var res = 0.0;
            for (var i = 0; i < n; i++)
            {
                res += a[i];
            }

            return res;
        }

        if (n <= 128)
        {
            Span<double> r = stackalloc double[8];
            for (var j = 0; j < 8; j++)
            {
                r[j] = a[j];
            }

            var i = 8;
            for (; i < n - (n % 8); i += 8)
            {
                for (var j = 0; j < 8; j++)
                {
                    r[j] += a[i + j];
                }
            }

            var res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for (; i < n; i++)
            {
                res += a[i];
            }

            return res;
        }

        var n2 = n / 2;
        n2 -= n2 % 8;
        return PairwiseSum(a[..n2]) + PairwiseSum(a[n2..]);
    }

    /// <summary>numpy's <c>round(x, 2)</c>: rint(x × 100) / 100 with half to even.</summary>
    public static double NumpyRound2(double x) => Math.Round(x * 100, MidpointRounding.ToEven) / 100;
}
