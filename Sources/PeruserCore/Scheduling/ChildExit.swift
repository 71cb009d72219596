// What a child's death means to the parent: whether it failed to start (its environment is
// then flagged, so that connections stop queueing for a worker that may never come), and what
// RestartBackoff is told.
//
// The flags and the generation come from the parent's private record of the child; the status
// comes from the shared table, which the child itself wrote, so it is only a hint: a lie there
// can at worst mark the liar's own environment as failing or spare it the backoff, never
// touch another environment.

public struct ChildExit: Equatable {
    /// The child is of the generation the parent plans for now: only then does its death count
    /// for the backoff, and only then is its slot in the shared table (this generation's) reset.
    public var isCurrentGeneration: Bool
    /// The parent had asked it to stop: to retire (SIGUSR1), to drain (SIGWINCH), or for
    /// ExpireTimeout (SIGTERM).
    public var wasAskedToStop: Bool
    /// It had reported itself ready or busy, so it did start (always false for an older
    /// generation, whose status is not in this generation's table).
    public var wasServing: Bool
    /// What RestartBackoff is told as `cleanly`: it exited with status 0, or it was asked to stop.
    public var countsAsClean: Bool
    /// A worker of this generation died uncleanly, unasked, while the server was not stopping,
    /// and had never got past `.starting`: its jail, cgroup or user is missing, say.
    public var failedToStart: Bool

    public init(isCurrentGeneration: Bool, wasAskedToStop: Bool, wasServing: Bool, countsAsClean: Bool,
                failedToStart: Bool) {
        self.isCurrentGeneration = isCurrentGeneration
        self.wasAskedToStop = wasAskedToStop
        self.wasServing = wasServing
        self.countsAsClean = countsAsClean
        self.failedToStart = failedToStart
    }

    /// Whether the parent gives back the free pages of a worker's pool after this exit
    /// (`otherWorkersLive`: another worker of its environment and generation still lives). A
    /// worker that left by itself (MaxConnectionsPerChild, a crash) beside others is replaced
    /// while the load lasts, and its replacement takes a page of the pool again; a release
    /// there is paid again and again (MADV_REMOVE unmaps the range in every process mapping
    /// the table: 1.5 µs per request for one busy tenant on close at the defaults, which
    /// recycle a worker every 0.7 s). The pages come back at the next exit the parent asked for
    /// (an idle or surplus worker retired, a drain) or at the last worker's.
    public func releasesPoolPages(otherWorkersLive: Bool) -> Bool {
        isCurrentGeneration && (wasAskedToStop || !otherWorkersLive)
    }

    /// Reads a reaped child's death.
    /// - `role`, `generation`, `retiring`, `draining`, `expired`: the parent's private record.
    /// - `status`: the child's last status in this generation's shared table (nil: none to read;
    ///   the table already reads a byte that is no status as `.active`). Ignored for a child of
    ///   an older generation.
    /// - `exitedCleanly`: it exited with status 0 (not signalled).
    /// - `serverStopping`: the server is shutting down or restarting (children die as asked).
    public static func classify(role: ChildRole, generation: UInt32, retiring: Bool, draining: Bool, expired: Bool,
                                status: ChildStatus?, exitedCleanly: Bool, serverStopping: Bool,
                                currentGeneration: UInt32) -> ChildExit {
        let current = generation == currentGeneration
        let askedToStop = retiring || draining || expired
        let known = current ? status : nil
        let isWorker: Bool
        switch role {
        case .multiplexer: isWorker = false
        case .worker: isWorker = true
        }
        return ChildExit(
            isCurrentGeneration: current,
            wasAskedToStop: askedToStop,
            wasServing: known == .ready || known == .active,
            countsAsClean: exitedCleanly || askedToStop,
            failedToStart: current && isWorker && !serverStopping && !exitedCleanly && !askedToStop
                && known == .starting)
    }
}
