using System.Globalization;
using System.Text.RegularExpressions;

namespace Suanli.Simulation.Protocols;

/// <summary>
/// Go's math/rand generator (the pre-Go-1.24 global source: additive lagged Fibonacci, 607 words) with the exact draw
/// algorithms of Int63, Int31, Uint32, Int31n, Intn, Perm and Shuffle, so seeded workloads of Go simulators can be
/// replayed draw for draw. The 607-word seed table (rngCooked) is read from Go's own source, src/math/rand/rng.go
/// (BSD-3-Clause), found in a Go installation (Debian: golang-1.19-src) rather than copied into this repository.
/// </summary>
public sealed partial class GoRandom
{
    private const int Len = 607;
    private const int Tap = 273;
    private const long Mask = long.MaxValue;
    private readonly long[] _vec = new long[Len];
    private int _tap;
    private int _feed;

    /// <summary>Seeds a generator exactly like Go's <c>rand.Seed(seed)</c>.</summary>
    public GoRandom(long seed, IReadOnlyList<long> rngCooked)
    {
        if (rngCooked.Count != Len)
        {
            throw new ArgumentException($"rngCooked: expected {Len} words, got {rngCooked.Count}", nameof(rngCooked));
        }

        _tap = 0;
        _feed = Len - Tap;
        seed %= int.MaxValue;
        if (seed < 0)
        {
            seed += int.MaxValue;
        }

        if (seed == 0)
        {
            seed = 89482311;
        }

        var x = (int)seed;
        for (var i = -20; i < Len; i++)
        {
            x = SeedRand(x);
            if (i >= 0)
            {
                long u = (long)x << 40;
                x = SeedRand(x);
                u ^= (long)x << 20;
                x = SeedRand(x);
                u ^= x;
                u ^= rngCooked[i];
                _vec[i] = u;
            }
        }
    }

    private static int SeedRand(int x)
    {
        const int a = 48271, q = 44488, r = 3399;
        var hi = x / q;
        var lo = x % q;
        x = (a * lo) - (r * hi);
        if (x < 0)
        {
            x += int.MaxValue;
        }

        return x;
    }

    /// <summary>Go's Int63.</summary>
    public long Int63()
    {
        if (--_tap < 0)
        {
            _tap += Len;
        }

        if (--_feed < 0)
        {
            _feed += Len;
        }

        var x = unchecked(_vec[_feed] + _vec[_tap]);
        _vec[_feed] = x;
        return x & Mask;
    }

    /// <summary>Go's Int31.</summary>
    public int Int31() => (int)(Int63() >> 32);

    /// <summary>Go's Uint32.</summary>
    public uint Uint32() => (uint)(Int63() >> 31);

    /// <summary>Go's Int31n (rejection sampling; used by Intn).</summary>
    public int Int31n(int n)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(n);
        if ((n & (n - 1)) == 0)
        {
            return Int31() & (n - 1);
        }

        var max = (int)((1u << 31) - 1 - ((1u << 31) % (uint)n));
        var v = Int31();
        while (v > max)
        {
            v = Int31();
        }

        return v % n;
    }

    /// <summary>Go's Intn for n below 2^31.</summary>
    public int Intn(int n) => Int31n(n);

    /// <summary>Go's unexported int31n (Lemire's method; used by Shuffle).</summary>
    public int Int31nLemire(int n)
    {
        var v = Uint32();
        var prod = (ulong)v * (ulong)n;
        var low = (uint)prod;
        if (low < (uint)n)
        {
            var thresh = unchecked((uint)-n) % (uint)n;
            while (low < thresh)
            {
                v = Uint32();
                prod = (ulong)v * (ulong)n;
                low = (uint)prod;
            }
        }

        return (int)(prod >> 32);
    }

    /// <summary>Go's Perm.</summary>
    public int[] Perm(int n)
    {
        var m = new int[n];
        for (var i = 0; i < n; i++)
        {
            var j = Intn(i + 1);
            m[i] = m[j];
            m[j] = i;
        }

        return m;
    }

    /// <summary>Go's Shuffle (n below 2^31).</summary>
    public void Shuffle<T>(IList<T> items)
    {
        for (var i = items.Count - 1; i > 0; i--)
        {
            var j = Int31nLemire(i + 1);
            (items[i], items[j]) = (items[j], items[i]);
        }
    }

    /// <summary>Places searched for Go's rng.go, in order, after the SUANLI_GO_RNG_SOURCE environment variable.</summary>
    public static IEnumerable<string> SourceCandidates()
    {
        if (Environment.GetEnvironmentVariable("SUANLI_GO_RNG_SOURCE") is { Length: > 0 } env)
        {
            yield return env;
        }

        if (Environment.GetEnvironmentVariable("GOROOT") is { Length: > 0 } root)
        {
            yield return Path.Combine(root, "src", "math", "rand", "rng.go");
        }

        foreach (var dir in new[] { "/usr/share", "/usr/lib", "/usr/local" })
        {
            if (!Directory.Exists(dir))
            {
                continue;
            }

            foreach (var go in Directory.EnumerateDirectories(dir, "go*").Order(StringComparer.Ordinal))
            {
                yield return Path.Combine(go, "src", "math", "rand", "rng.go");
            }
        }
    }

    /// <summary>
    /// Loads rngCooked from Go's rng.go. Throws <see cref="FileNotFoundException"/> explaining how to install it.
    /// </summary>
    public static long[] LoadRngCooked()
    {
        foreach (var path in SourceCandidates())
        {
            if (File.Exists(path))
            {
                return ParseRngCooked(File.ReadAllText(path), path);
            }
        }

        throw new FileNotFoundException(
            "Go's math/rand source (src/math/rand/rng.go) was not found; the FGD protocol needs its seed table to replay " +
            "the artifact's workloads. Install it with 'apt-get install golang-1.19-src' or set SUANLI_GO_RNG_SOURCE to the file.");
    }

    /// <summary>Parses the rngCooked array literal out of rng.go text.</summary>
    public static long[] ParseRngCooked(string source, string where)
    {
        var start = source.IndexOf("rngCooked [", StringComparison.Ordinal);
        if (start < 0)
        {
            start = source.IndexOf("rng_cooked [", StringComparison.Ordinal);
        }

        var open = start < 0 ? -1 : source.IndexOf('{', start);
        var close = open < 0 ? -1 : source.IndexOf('}', open);
        if (close < 0)
        {
            throw new FormatException($"{where}: no rngCooked table found");
        }

        var words = NumberPattern().Matches(source[(open + 1)..close])
            .Select(m => long.Parse(m.Value, CultureInfo.InvariantCulture)).ToArray();
        return words.Length == Len ? words : throw new FormatException($"{where}: rngCooked has {words.Length} words, expected {Len}");
    }

    [GeneratedRegex(@"-?\d+")]
    private static partial Regex NumberPattern();
}
