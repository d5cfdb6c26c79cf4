using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlScalar = YamlDotNet.Core.Events.Scalar;

namespace Suanli.Server;

/// <summary>
/// The one reader of untrusted JSON and YAML documents. Bounds come first (size is bounded by the caller; depth and
/// node count here, before anything is expanded or allocated per node), then strict rules: no duplicate keys, strings
/// that are valid Unicode (no lone surrogates, from an escape such as <c>"\ud800"</c>), numbers that are finite, and
/// for YAML no anchors or aliases at all (an alias graph of a few hundred bytes expands to gigabytes) and no tags.
/// Every refusal is a <see cref="ValidationException"/> naming the field and the rule.
/// </summary>
public static class StrictInput
{
    /// <summary>Deepest nesting a document may have.</summary>
    public const int MaxDepth = 32;

    /// <summary>Most nodes (scalars, sequences, mappings) a YAML document may have.</summary>
    public const int MaxNodes = 20_000;

    private static readonly JsonDocumentOptions DocumentOptions = new() { MaxDepth = MaxDepth, AllowDuplicateProperties = false };

    private static readonly UTF8Encoding StrictUtf8 = new(false, true);

    /// <summary>Parses strict JSON; null for the literal <c>null</c>.</summary>
    public static JsonNode? ParseJson(string text)
    {
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(text, null, DocumentOptions);
        }
        catch (JsonException e)
        {
            var duplicate = e.Message.Contains("duplicate", StringComparison.OrdinalIgnoreCase);
            var depth = e.Message.Contains("depth", StringComparison.OrdinalIgnoreCase);
            throw new ValidationException([new FieldError(Field(e.Path), duplicate ? "duplicate" : depth ? "depth" : "syntax",
                duplicate ? "a key appears twice in one object" : depth ? $"nesting deeper than {MaxDepth} levels" : $"malformed JSON: {e.Message}")]);
        }

        Check(node, "$");
        return node;
    }

    /// <summary>Parses a strict YAML document into the JSON it means (YAML 1.2 core schema for plain scalars).</summary>
    public static JsonNode? ParseYaml(string text)
    {
        var parser = new Parser(new StringReader(text));
        var nodes = 0;
        try
        {
            parser.Consume<StreamStart>();
            if (parser.Accept<StreamEnd>(out _))
            {
                return null;
            }

            parser.Consume<DocumentStart>();
            var root = ReadNode(parser, "$", 0, ref nodes);
            parser.Consume<DocumentEnd>();
            if (!parser.Accept<StreamEnd>(out _))
            {
                throw new ValidationException([new FieldError("$", "single", "one YAML document per request")]);
            }

            return root;
        }
        catch (YamlException e)
        {
            throw new ValidationException([new FieldError("$", "syntax", $"malformed YAML at line {e.Start.Line}: {e.Message}")]);
        }
        catch (InvalidOperationException)
        {
            // YamlDotNet's scanner gives up on some malformed input (an unclosed flow sequence) this way.
            throw new ValidationException([new FieldError("$", "syntax", "malformed YAML (an unclosed bracket or quote?)")]);
        }
    }

    private static JsonNode? ReadNode(IParser parser, string path, int depth, ref int nodes)
    {
        if (++nodes > MaxNodes)
        {
            throw new ValidationException([new FieldError(path, "size", $"more than {MaxNodes} YAML nodes")]);
        }

        if (depth > MaxDepth)
        {
            throw new ValidationException([new FieldError(path, "depth", $"nesting deeper than {MaxDepth} levels")]);
        }

        var e = parser.Current;
        if (e is AnchorAlias)
        {
            throw new ValidationException([new FieldError(path, "alias", "YAML aliases (*name) are not accepted: write the value out")]);
        }

        if (e is NodeEvent { Anchor.IsEmpty: false })
        {
            throw new ValidationException([new FieldError(path, "anchor", "YAML anchors (&name) are not accepted")]);
        }

        if (e is NodeEvent { Tag.IsEmpty: false } tagged && !(tagged is YamlScalar s0 && s0.Tag.Value is "tag:yaml.org,2002:str" or "!"))
        {
            throw new ValidationException([new FieldError(path, "tag", "YAML tags (!tag) are not accepted")]);
        }

        switch (e)
        {
            case YamlScalar s:
                parser.MoveNext();
                return ScalarValue(s, path);
            case SequenceStart:
            {
                parser.MoveNext();
                var array = new JsonArray();
                var i = 0;
                while (!parser.TryConsume<SequenceEnd>(out _))
                {
                    array.Add(ReadNode(parser, $"{path}[{i.ToString(CultureInfo.InvariantCulture)}]", depth + 1, ref nodes));
                    i++;
                }

                return array;
            }

            case MappingStart:
            {
                parser.MoveNext();
                var obj = new JsonObject();
                while (!parser.TryConsume<MappingEnd>(out _))
                {
                    if (parser.Current is not YamlScalar key || key.Anchor is { IsEmpty: false })
                    {
                        throw new ValidationException([new FieldError(path, "key", "mapping keys must be plain text")]);
                    }

                    parser.MoveNext();
                    var at = path == "$" ? key.Value : $"{path}.{key.Value}";
                    CheckString(key.Value, at);
                    if (obj.ContainsKey(key.Value))
                    {
                        throw new ValidationException([new FieldError(at, "duplicate", "a key appears twice in one mapping")]);
                    }

                    obj[key.Value] = ReadNode(parser, at, depth + 1, ref nodes);
                }

                return obj;
            }

            default:
                throw new ValidationException([new FieldError(path, "syntax", $"unexpected YAML {e?.GetType().Name ?? "end"}")]);
        }
    }

    private static JsonNode? ScalarValue(YamlScalar s, string path)
    {
        var v = s.Value;
        CheckString(v, path);
        if (s.Style != ScalarStyle.Plain || !s.Tag.IsEmpty)
        {
            return JsonValue.Create(v);
        }

        switch (v)
        {
            case "" or "~" or "null" or "Null" or "NULL":
                return null;
            case "true" or "True" or "TRUE":
                return JsonValue.Create(true);
            case "false" or "False" or "FALSE":
                return JsonValue.Create(false);
            case ".inf" or ".Inf" or ".INF" or "+.inf" or "+.Inf" or "+.INF" or "-.inf" or "-.Inf" or "-.INF" or ".nan" or ".NaN" or ".NAN":
                throw new ValidationException([new FieldError(path, "finite", "numbers must be finite")]);
        }

        if (v.StartsWith("0x", StringComparison.Ordinal) && long.TryParse(v.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var hex))
        {
            return JsonNode.Parse(hex.ToString(CultureInfo.InvariantCulture));
        }

        if (v.StartsWith("0o", StringComparison.Ordinal) && v.Length > 2 && v[2..].All(c => c is >= '0' and <= '7') && v.Length <= 23)
        {
            return JsonNode.Parse(Convert.ToInt64(v[2..], 8).ToString(CultureInfo.InvariantCulture));
        }

        if (IsYamlNumber(v))
        {
            if (!double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) || !double.IsFinite(d))
            {
                throw new ValidationException([new FieldError(path, "finite", "numbers must be finite")]);
            }

            // Re-read as JSON so the value converts to any numeric type the field asks for (long, decimal, double).
            var json = v.TrimStart('+');
            json = json.StartsWith('.') ? "0" + json : json.StartsWith("-.", StringComparison.Ordinal) ? "-0" + json[1..] : json;
            json = json.EndsWith('.') ? json + "0" : json;
            return JsonNode.Parse(json.Replace(".e", ".0e", StringComparison.OrdinalIgnoreCase));
        }

        return JsonValue.Create(v);
    }

    /// <summary>YAML 1.2 core schema int or float: [-+]?(digits(.digits?)?|.digits)([eE][-+]?digits)?</summary>
    private static bool IsYamlNumber(string v)
    {
        var i = 0;
        if (i < v.Length && v[i] is '+' or '-')
        {
            i++;
        }

        var digits = 0;
        while (i < v.Length && char.IsAsciiDigit(v[i]))
        {
            i++;
            digits++;
        }

        if (i < v.Length && v[i] == '.')
        {
            i++;
            while (i < v.Length && char.IsAsciiDigit(v[i]))
            {
                i++;
                digits++;
            }
        }

        if (digits == 0)
        {
            return false;
        }

        if (i < v.Length && v[i] is 'e' or 'E')
        {
            i++;
            if (i < v.Length && v[i] is '+' or '-')
            {
                i++;
            }

            var exp = 0;
            while (i < v.Length && char.IsAsciiDigit(v[i]))
            {
                i++;
                exp++;
            }

            if (exp == 0)
            {
                return false;
            }
        }

        return i == v.Length;
    }

    /// <summary>Checks a parsed JSON tree: valid Unicode in every key and string, finite numbers.</summary>
    public static void Check(JsonNode? node, string path)
    {
        try
        {
            CheckNode(node, path);
        }
        catch (InvalidOperationException)
        {
            // System.Text.Json refuses to unescape a lone surrogate ("\ud800") when the key or string is read.
            throw new ValidationException([new FieldError(path, "unicode", "must be valid Unicode text (no lone surrogates)")]);
        }
    }

    private static void CheckNode(JsonNode? node, string path)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var (k, v) in o)
                {
                    var at = path == "$" ? k : $"{path}.{k}";
                    CheckString(k, at);
                    CheckNode(v, at);
                }

                break;
            case JsonArray a:
                for (var i = 0; i < a.Count; i++)
                {
                    CheckNode(a[i], $"{path}[{i.ToString(CultureInfo.InvariantCulture)}]");
                }

                break;
            case JsonValue v when v.GetValueKind() == JsonValueKind.String:
                CheckString(v.GetValue<string>(), path);
                break;
            case JsonValue v when v.GetValueKind() == JsonValueKind.Number:
                if (!v.TryGetValue<double>(out var d) || !double.IsFinite(d))
                {
                    throw new ValidationException([new FieldError(path, "finite", "numbers must be finite and representable")]);
                }

                break;
        }
    }

    /// <summary>Refuses strings that are not valid Unicode (a lone surrogate cannot be stored or printed).</summary>
    public static void CheckString(string s, string path)
    {
        try
        {
            _ = StrictUtf8.GetByteCount(s);
        }
        catch (EncoderFallbackException)
        {
            throw new ValidationException([new FieldError(path, "unicode", "must be valid Unicode text (no lone surrogates)")]);
        }
    }

    private static string Field(string? jsonPath) => jsonPath is null or "$" ? "$" : jsonPath.StartsWith("$.", StringComparison.Ordinal) ? jsonPath[2..] : jsonPath;
}
