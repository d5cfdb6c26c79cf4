using System.Globalization;
using Suanli.Core.Domain;

namespace Suanli.Simulation.Traces;

/// <summary>One SWF record (fields 1..18 as in the Standard Workload Format), -1 = unknown.</summary>
public readonly record struct SwfRecord(long Line, long[] Fields)
{
    public long JobId => Fields[0];

    public long Submit => Fields[1];

    public long Run => Fields[3];

    public long AllocatedProcs => Fields[4];

    public long RequestedProcs => Fields[7];

    public long RequestedTime => Fields[8];

    public long User => Fields[11];

    /// <summary>Field 17: the job this one followed (its "preceding job number"), -1 when none.</summary>
    public long PrecedingJob => Fields[16];
}

/// <summary>
/// Reads Standard Workload Format logs (Parallel Workloads Archive). Header lines start with ';' (MaxNodes and
/// MaxProcs are read from them); a job line has 18 whitespace-separated integers. Malformed lines are counted, never
/// fatal.
/// </summary>
public static class SwfReader
{
    /// <summary>Header values and records of a log.</summary>
    public sealed record SwfLog(long MaxNodes, long MaxProcs, List<SwfRecord> Records, Trace Diagnostics);

    /// <summary>Reads the raw records of an SWF log.</summary>
    public static SwfLog ReadRecords(string path)
    {
        using var reader = TraceFiles.Open(path);
        return ReadRecords(reader);
    }

    /// <summary>Reads the raw records from a reader.</summary>
    public static SwfLog ReadRecords(TextReader reader)
    {
        var diag = new Trace();
        long maxNodes = -1, maxProcs = -1, lineNo = 0;
        var records = new List<SwfRecord>();
        while (reader.ReadLine() is { } line)
        {
            lineNo++;
            var text = line.AsSpan().Trim();
            if (text.IsEmpty)
            {
                continue;
            }

            if (text[0] == ';')
            {
                ParseHeader(text[1..].Trim(), ref maxNodes, ref maxProcs);
                continue;
            }

            var fields = new long[18];
            var n = 0;
            var ok = true;
            foreach (var range in text.SplitAny(" \t"))
            {
                var part = text[range];
                if (part.IsEmpty)
                {
                    continue;
                }

                if (n >= 18 || !double.TryParse(part, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || !double.IsFinite(v))
                {
                    ok = false;
                    break;
                }

                fields[n++] = (long)v;
            }

            if (!ok || n != 18)
            {
                diag.Bad(lineNo, ok ? $"expected 18 fields, found {n}" : "more than 18 fields or a non-numeric field");
                continue;
            }

            records.Add(new SwfRecord(lineNo, fields));
        }

        if (maxProcs < 0)
        {
            maxProcs = maxNodes;
        }

        if (maxNodes < 0)
        {
            maxNodes = maxProcs;
        }

        return new SwfLog(maxNodes, maxProcs, records, diag);
    }

    private static void ParseHeader(ReadOnlySpan<char> h, ref long maxNodes, ref long maxProcs)
    {
        var colon = h.IndexOf(':');
        if (colon < 0)
        {
            return;
        }

        var key = h[..colon].Trim();
        if (!long.TryParse(h[(colon + 1)..].Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var value))
        {
            return;
        }

        if (key.SequenceEqual("MaxNodes"))
        {
            maxNodes = value;
        }
        else if (key.SequenceEqual("MaxProcs"))
        {
            maxProcs = value;
        }
    }

    /// <summary>
    /// Reads an SWF log as a replayable trace. Processors = max(allocated, requested) as in the RLScheduler artifact;
    /// requested time = field 9, or the run time when unknown. Jobs that never ran (run time unknown or 0) or ask for no
    /// processors are skipped with their reason. Tasks: one per node, ceil(processors / processors-per-node) nodes.
    /// With <paramref name="dependencies"/>, field 17 (preceding job) becomes an afterany dependency: the job is not
    /// started before the job it followed has ended (field 18's think time is not added; a job that followed a skipped
    /// line can never run and is reported as such).
    /// </summary>
    public static Trace Read(string path, bool dependencies = false)
    {
        var log = ReadRecords(path);
        var trace = log.Diagnostics;
        var ppn = Math.Max(1, log.MaxNodes > 0 ? log.MaxProcs / log.MaxNodes : 1);
        if (log.MaxNodes > 0)
        {
            trace.DefaultPool = Pool.Uniform((int)log.MaxNodes, new NodeShape(ppn * 1000, 0));
        }

        foreach (var r in log.Records)
        {
            var procs = Math.Max(r.AllocatedProcs, r.RequestedProcs);
            if (r.Run < 0)
            {
                trace.Skip(r.Line, "run time unknown (cancelled before start)");
                continue;
            }

            if (r.Run == 0)
            {
                trace.Skip(r.Line, "run time 0");
                continue;
            }

            if (procs <= 0)
            {
                trace.Skip(r.Line, "no processor count");
                continue;
            }

            if (r.Submit < 0)
            {
                trace.Skip(r.Line, "submit time unknown");
                continue;
            }

            var req = r.RequestedTime > 0 ? r.RequestedTime : r.Run;
            var tasks = (int)((procs + ppn - 1) / ppn);
            var spec = new JobSpec(r.JobId, r.User >= 0 ? "u" + r.User.ToString(CultureInfo.InvariantCulture) : Tenant.Unknown,
                new TaskResources(ppn * 1000, 0), tasks, r.Submit, req,
                Dependencies: dependencies && r.PrecedingJob > 0 && r.PrecedingJob != r.JobId ? [new JobDependency(DependencyKind.AfterAny, r.PrecedingJob)] : null);
            trace.Jobs.Add(new TraceJob(spec, r.Run));
        }

        return trace;
    }
}
