using Suanli.Core.Domain;

namespace Suanli.Simulation.Traces;

/// <summary>A job of a trace: what the scheduler sees (<see cref="Spec"/>) and what only the simulator knows (run time).</summary>
public sealed record TraceJob(JobSpec Spec, long RunSeconds);

/// <summary>A trace line that was not used, with its 1-based line number and the reason.</summary>
public sealed record SkippedLine(long Line, string Reason);

/// <summary>
/// A loaded trace: jobs in file order, skipped and malformed lines (counted, the first few kept with line numbers), and
/// the default cluster the trace implies (an SWF log's MaxNodes/MaxProcs), if any.
/// </summary>
public sealed class Trace
{
    /// <summary>How many skipped lines keep their line number and reason.</summary>
    public const int KeptExamples = 10;

    /// <summary>Jobs in file order.</summary>
    public List<TraceJob> Jobs { get; } = [];

    /// <summary>Lines that were well-formed but not replayable (e.g. cancelled before start), by reason.</summary>
    public Dictionary<string, long> SkippedByReason { get; } = new(StringComparer.Ordinal);

    /// <summary>Lines that could not be parsed.</summary>
    public long Malformed { get; set; }

    /// <summary>The first malformed or skipped lines, with numbers.</summary>
    public List<SkippedLine> Examples { get; } = [];

    /// <summary>The cluster the trace implies, or null.</summary>
    public Pool? DefaultPool { get; set; }

    /// <summary>Total skipped (not malformed) lines.</summary>
    public long Skipped => SkippedByReason.Values.Sum();

    internal void Skip(long line, string reason)
    {
        SkippedByReason[reason] = SkippedByReason.GetValueOrDefault(reason) + 1;
        Note(line, reason);
    }

    internal void Bad(long line, string reason)
    {
        Malformed++;
        Note(line, "malformed: " + reason);
    }

    private void Note(long line, string reason)
    {
        if (Examples.Count < KeptExamples)
        {
            Examples.Add(new SkippedLine(line, reason));
        }
    }
}

/// <summary>Trace formats.</summary>
public enum TraceFormat
{
    Swf,
    Philly,
    Pai,
}

/// <summary>Opens trace files, gzip-streamed when the name ends in .gz.</summary>
public static class TraceFiles
{
    /// <summary>Opens a text reader over a plain or gzip file.</summary>
    public static StreamReader Open(string path)
    {
        Stream s = File.OpenRead(path);
        if (path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase))
        {
            s = new System.IO.Compression.GZipStream(s, System.IO.Compression.CompressionMode.Decompress);
        }

        return new StreamReader(s);
    }

    /// <summary>Guesses the format from the file name: .swf → SWF, Philly in the name → philly, openb/pod → pai.</summary>
    public static TraceFormat Guess(string path)
    {
        var name = Path.GetFileName(path).ToLowerInvariant();
        return name.Contains(".swf", StringComparison.Ordinal) ? TraceFormat.Swf
            : name.Contains("philly", StringComparison.Ordinal) ? TraceFormat.Philly
            : name.Contains("pod", StringComparison.Ordinal) || name.Contains("openb", StringComparison.Ordinal) ? TraceFormat.Pai
            : throw new ArgumentException($"format: cannot tell the format of '{name}'; pass --format swf|philly|pai");
    }

    /// <summary>Loads a trace in <paramref name="format"/>; <paramref name="dependencies"/>: an SWF log's field 17 as dependencies.</summary>
    public static Trace Load(string path, TraceFormat format, bool dependencies = false) => format switch
    {
        TraceFormat.Swf => SwfReader.Read(path, dependencies),
        TraceFormat.Philly => PhillyReader.Read(path),
        _ => PaiReader.ReadTrace(path),
    };
}
