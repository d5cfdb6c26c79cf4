namespace Suanli.Simulation.Traces;

/// <summary>
/// A minimal reader for the traces' simple CSV (comma-separated, header row, no quoted fields): maps column names to
/// indices and yields rows with their line numbers.
/// </summary>
internal sealed class CsvTable
{
    private readonly Dictionary<string, int> _columns = new(StringComparer.Ordinal);

    private CsvTable(string header)
    {
        var names = header.Split(',');
        for (var i = 0; i < names.Length; i++)
        {
            _columns[names[i].Trim()] = i;
        }

        Width = names.Length;
    }

    public int Width { get; }

    public int Column(string name, string file) =>
        _columns.TryGetValue(name, out var i) ? i : throw new FormatException($"{file}: header has no column '{name}'");

    public static IEnumerable<(long Line, string[] Cells)> Rows(string path, out CsvTable table)
    {
        var reader = TraceFiles.Open(path);
        var header = reader.ReadLine() ?? throw new FormatException($"{path}: empty file, expected a header row");
        table = new CsvTable(header);
        return Iterate(reader);
    }

    private static IEnumerable<(long, string[])> Iterate(StreamReader reader)
    {
        using (reader)
        {
            long line = 1;
            while (reader.ReadLine() is { } text)
            {
                line++;
                if (text.Length > 0)
                {
                    yield return (line, text.Split(','));
                }
            }
        }
    }
}
