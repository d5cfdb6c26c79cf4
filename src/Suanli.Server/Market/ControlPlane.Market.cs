using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>Time-driven market housekeeping (contracts settled, vouchers expired, old output purged) and offer changes.</summary>
public sealed partial class ControlPlane
{
    private long _nextHousekeepingMs;

    /// <summary>About once a second: expired vouchers give back what they hold, ended reserved contracts are settled.</summary>
    private async Task HousekeepMarketAsync()
    {
        var now = NowMs;
        if (now < _nextHousekeepingMs)
        {
            return;
        }

        _nextHousekeepingMs = now + 1000;
        var expired = await _ledger.ExpireVouchersAsync(now);
        var settled = await _ledger.SettleContractsAsync(now, Options.FeeBps);
        if (expired + settled > 0)
        {
            MoneyMoved();
        }

        if (settled > 0)
        {
            // A settled contract changes what the pool shows for its offer; an expired voucher does not.
            OffersChanged(await _ledger.OffersAsync());
        }

        if (Options.LogRetention is { } keep && now >= _nextLogPurgeMs)
        {
            _nextLogPurgeMs = now + 60_000;
            var purged = await _store.PurgeLogsAsync(now - (long)keep.TotalMilliseconds);
            if (purged > 0)
            {
                ServerLog.OutputPurged(_log, purged, keep.TotalDays);
            }
        }
    }

    private long _nextLogPurgeMs;

    /// <summary>An offer was created or withdrawn: placement uses the live set from the next cycle.</summary>
    public void OffersChanged(IEnumerable<OfferRecord> offers)
    {
        lock (_gate)
        {
            _offers = offers.ToDictionary(o => o.Id);
            _poolDirty = true;
        }

        Wake();
    }
}
