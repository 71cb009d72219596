// The image's side: an apache2 the root parent executed with PERUSER_IMAGE set and a
// configuration holding one environment's vhosts. It went through Apache's whole startup with
// that configuration (mod_ssl loaded that environment's keys only, mod_php made its own opcache),
// listens on nothing, and forks that environment's workers when the root asks.
import CApache
import CPeruserShim
import Glibc
import PeruserCore

struct ImageStart {
    let role: ImageRole
    let generation: UInt32
    let control: Int32
    let table: Int32
    let tableSize: Int
    let rootPid: pid_t
    /// The root's slot count (a graceful restart may keep an earlier ServerLimit's).
    let slots: Int
    /// How many environments the root's configuration declares: the image's must be as many.
    let environments: Int
    /// The multiplexers' image only: the secret's and the board's memfds, the demand pipe's
    /// writing end, and the listeners.
    var secret: Int32 = -1
    var board: Int32 = -1
    var demand: Int32 = -1
    var listeners: [Int32]?

    /// "role:generation:control:table:tableSize:rootPid:slots:environments", role an
    /// environment's index or "m", which adds ":secret:board:demand:listener,listener...".
    var variable: String {
        let role: String
        switch self.role {
        case .environment(let index): role = "\(index)"
        case .multiplexers: role = "m"
        }
        var text = "\(role):\(generation):\(control):\(table):\(tableSize):\(rootPid):\(slots):\(environments)"
        if self.role == .multiplexers {
            text += ":\(secret):\(board):\(demand):" + (listeners ?? []).map(String.init).joined(separator: ",")
        }
        return text
    }

    /// The descriptors it names.
    var descriptors: Set<Int32> {
        Set([control, table, secret, board, demand] + (listeners ?? [])).subtracting([-1])
    }

    /// From the environment variable; nil when this process is not an image (or it is garbled).
    static func fromEnvironment() -> ImageStart? {
        guard let raw = getenv(imageVariable) else { return nil }
        return parse(String(cString: raw))
    }

    static func parse(_ text: String) -> ImageStart? {
        let fields = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard fields.count == 8 || fields.count == 12 else { return nil }
        let role: ImageRole
        if fields[0] == "m" {
            guard fields.count == 12 else { return nil }
            role = .multiplexers
        } else {
            guard fields.count == 8, let index = Int(fields[0]), index >= 0 else { return nil }
            role = .environment(index)
        }
        guard let generation = UInt32(fields[1]), let control = Int32(fields[2]), control > 2,
              let table = Int32(fields[3]), table > 2, let size = Int(fields[4]), size > 0,
              let root = Int32(fields[5]), root > 1, let slots = Int(fields[6]), slots > 0,
              slots <= mostServerLimit, let environments = Int(fields[7]), environments >= 0 else { return nil }
        var start = ImageStart(role: role, generation: generation, control: control, table: table,
                               tableSize: size, rootPid: root, slots: slots, environments: environments)
        if role == .multiplexers {
            let listeners = fields[11].split(separator: ",").compactMap { Int32($0) }
            guard let secret = Int32(fields[8]), secret > 2, let board = Int32(fields[9]), board > 2,
                  let demand = Int32(fields[10]), demand > 2, listeners.allSatisfy({ $0 > 2 }) else { return nil }
            start.secret = secret
            start.board = board
            start.demand = demand
            start.listeners = listeners
        }
        return start
    }
}

/// The descriptor the image reads its configuration from (`-f /proc/self/fd/N`), if any. Read
/// from /proc/self/cmdline: in an image forked from the zygote, this module's second load sees
/// an empty CommandLine (measured: argc 0).
func configurationDescriptor() -> Int32? {
    guard let file = fopen("/proc/self/cmdline", "r") else { return nil }
    defer { fclose(file) }
    var argument: [UInt8] = []
    while true {
        let byte = fgetc(file)
        if byte == EOF || byte == 0 {
            let text = String(decoding: argument, as: UTF8.self)
            if text.hasPrefix("/proc/self/fd/"), let fd = Int32(text.dropFirst(14)) { return fd }
            if byte == EOF { return nil }
            argument = []
        } else {
            argument.append(UInt8(truncatingIfNeeded: byte))
        }
    }
}

/// At the first pre_config of an image or the zygote: closes every descriptor it inherited
/// from the root parent but `descriptors` (those its start names) and its configuration file. Not everything of the parent is
/// close-on-exec: the writing ends of piped loggers are kept open for children on purpose,
/// and an image of A would hand B's logger's pipe to A's workers.
func closeInheritedDescriptors(keeping descriptors: Set<Int32>) {
    var keep = descriptors.union([0, 1, 2])
    if let fd = configurationDescriptor() { keep.insert(fd) }
    guard let directory = opendir("/proc/self/fd") else { return }
    var open: [Int32] = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        if let fd = Int32(name) { open.append(fd) }
    }
    let own = dirfd(directory)
    closedir(directory)
    for fd in open where !keep.contains(fd) && fd != own { close(fd) }
}

/// Set in pre_config of an image (each configuration pass: the module is reloaded between them).
nonisolated(unsafe) var imageStart: ImageStart?

/// An image or the zygote: a process the root parent executed with a configuration it had
/// already checked and spoken about, which listens on nothing.
var startedByTheRoot: Bool { imageStart != nil || zygoteStart != nil }

@_cdecl("peruser_is_image")
public func peruserIsImage() -> Int32 {
    startedByTheRoot ? 1 : 0
}

/// The image's run hook: never returns to Apache's restart loop.
func imageRun(_ start: ImageStart, pconf: OpaquePointer?, server: UnsafeMutablePointer<server_rec>) -> Never {
    unsetenv(imageVariable)  // nothing below (PHP's getenv, CGIs) needs to see it
    configurationPool = pconf
    let environments = configuration.environments.count
    let name: String
    switch start.role {
    case .environment(let index): name = "the process image of environment \(configuration.environments[index]?.name ?? "\(index)")"
    case .multiplexers: name = "the multiplexers' process image"
    }
    func die(_ text: String) -> Never {
        log(PERUSER_LOG_EMERG, "peruser: \(name): \(text)")
        exit(exitChildFatal)
    }
    for fd in [start.control, start.table, start.secret, start.board, start.demand] + (start.listeners ?? []) where fd >= 0 {
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }
    // Its configuration (/proc/self/fd/N) is read: no child of the image needs it.
    if let fd = configurationDescriptor(), fd > 2 { close(fd) }
    if case .environment(let index) = start.role, index >= environments { die("no such environment") }
    // Every page index follows the environments' order: an image whose configuration declared
    // another number of them than the root's would use other environments' pages. (The root's
    // count comes with the start, from its own memory, not from the table anyone may write.)
    guard start.environments == environments else {
        die("its configuration declares \(environments) environments, the root parent's \(start.environments) "
            + "(an internal error in the image's configuration; set ProcessorImage shared and report it)")
    }
    guard let retained = retainedLasting(), retained.initializeOnce() else { die("no retained data") }
    lasting = retained
    // Its sizes come from this image's configuration (the root's), never from the table's header.
    let pages = workerPagePools().total
    guard start.tableSize >= ChildTableLayout.size(slots: start.slots, environments: environments, workerPages: pages)
    else { die("the child table is too small") }
    guard let mapped = mmap(nil, start.tableSize, PROT_READ | PROT_WRITE, MAP_SHARED, start.table, 0),
          mapped != MAP_FAILED else {
        die("cannot map the child table: \(Errno.current)")
    }
    let table = ChildTable(base: mapped, slotCount: start.slots, environmentCount: environments, workerPageCount: pages)
    retained.pointee.table = mapped
    retained.pointee.tableSize = start.tableSize
    retained.pointee.tableFD = start.table
    retained.pointee.tableEnvironments = Int32(environments)
    retained.pointee.scoreboardSlots = Int32(start.slots)
    sharedTable = table
    if start.role == .multiplexers {
        let page = Int(getpagesize()), boardSize = AvailabilityBoard.size(environments: environments)
        guard let secret = mmap(nil, page, PROT_READ, MAP_SHARED, start.secret, 0), secret != MAP_FAILED,
              let board = mmap(nil, boardSize, PROT_READ | PROT_WRITE, MAP_SHARED, start.board, 0), board != MAP_FAILED
        else { die("cannot map the multiplexers' secret or state: \(Errno.current)") }
        close(start.secret)
        close(start.board)
        retained.pointee.multiplexerSecret = secret
        retained.pointee.multiplexerState = board
        retained.pointee.multiplexerStateSize = boardSize
        availabilityBoard = AvailabilityBoard(base: board, count: max(1, environments))
        retained.pointee.demand = (-1, start.demand)
        if environments > 0, let ends = malloc(MemoryLayout<Int32>.stride * environments)?
            .bindMemory(to: Int32.self, capacity: environments) {
            ends.initialize(repeating: -1, count: environments)
            retained.pointee.previousHandbackEnds = ends
            retained.pointee.previousHandbackCount = Int32(environments)
            retained.pointee.previousGeneration = start.generation &- 1
        }
    }
    // A scoreboard of its own: its children are all it shows.
    guard ap_run_pre_mpm(server.pointee.process.pointee.pool, SB_SHARED) == OK else { die("no scoreboard") }
    channels = Array(repeating: EnvironmentChannels(), count: environments)
    signal(SIGCHLD, SIG_DFL)
    signal(SIGHUP, SIG_IGN)    // the root restarts by closing the control channel
    signal(SIGUSR1, SIG_IGN)
    signal(SIGWINCH, SIG_IGN)
    signal(SIGPIPE, SIG_IGN)
    setMPMState(AP_MPMQ_RUNNING)
    let control = Channel(fd: start.control)
    _ = ImageMessage.ready.bytes.withUnsafeBytes { control.send(payload: $0) }
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ImageMessage.size + 1, alignment: 8)
    while true {
        switch control.receive(into: buffer, blocking: true, descriptorOptional: true) {
        case .interrupted, .nothing, .invalid: continue
        case .empty, .failed: exit(0)  // the root closed the channel: this generation is over
        case .message(let length, let fd):
            let message = ImageMessage.decode(UnsafeRawBufferPointer(rebasing: buffer[0..<length]),
                                              slots: start.slots, pages: Int(UInt32.max >> 1), environments: environments)
            let forMultiplexers = start.role == .multiplexers
            switch message {
            case .handoffEnd(let environment)? where fd >= 0 && accepts(start.role, environment):
                if forMultiplexers {
                    channels[environment].handoffSend.close()
                    channels[environment].handoffSend = FileDescriptor(raw: fd)
                } else {
                    channels[environment].handoffReceive.close()
                    channels[environment].handoffReceive = FileDescriptor(raw: fd)
                }
            case .handbackEnd(let environment)? where fd >= 0 && accepts(start.role, environment):
                if forMultiplexers {
                    channels[environment].handbackReceive.close()
                    channels[environment].handbackReceive = FileDescriptor(raw: fd)
                } else {
                    channels[environment].handbackSend.close()
                    channels[environment].handbackSend = FileDescriptor(raw: fd)
                }
            case .previousHandback(let environment)? where fd >= 0 && forMultiplexers:
                if let ends = retained.pointee.previousHandbackEnds, environment < Int(retained.pointee.previousHandbackCount) {
                    if ends[environment] >= 0 { close(ends[environment]) }
                    ends[environment] = fd
                } else {
                    close(fd)
                }
            case .spawn(let slot, let page)?:
                let answer: ImageMessage
                // A multiplexer needs every environment's ends (they come before the first spawn).
                let complete = channels.allSatisfy { $0.handoffSend.isOpen && $0.handbackReceive.isOpen }
                if forMultiplexers && !complete {
                    if fd >= 0 { close(fd) }
                    answer = .failed(slot: slot, errno: 0)
                } else if forMultiplexers {
                    answer = fd >= 0 ? forkChild(start, slot: slot, control: control) {
                        startChildProcess()
                        ownPage = table.pageOffset(slot: slot, type: .multiplexer, workerPage: 0)
                        multiplexerMain(slot: slot, control: fd, parentPid: start.rootPid)
                    } : .failed(slot: slot, errno: EINVAL)
                    if fd >= 0 { close(fd) }
                } else {
                    if fd >= 0 { close(fd) }
                    answer = forkWorker(start, slot: slot, page: page, control: control, table: table)
                }
                _ = answer.bytes.withUnsafeBytes { control.send(payload: $0) }
            default:
                if fd >= 0 { close(fd) }
            }
        }
    }
}

/// An environment's image takes only its own environment's channel ends.
private func accepts(_ role: ImageRole, _ environment: Int) -> Bool {
    guard channels.indices.contains(environment) else { return false }
    if case .environment(let own) = role { return own == environment }
    return true
}

private func forkWorker(_ start: ImageStart, slot: Int, page: Int, control: Channel, table: ChildTable) -> ImageMessage {
    guard case .environment(let environment) = start.role, channels.indices.contains(environment),
          channels[environment].handoffReceive.isOpen, channels[environment].handbackSend.isOpen else {
        return .failed(slot: slot, errno: 0)
    }
    let cgroups = configuration.environments[environment]?.confinement.cgroups ?? []
    prepareGroups(for: environment)
    return forkChild(start, slot: slot, control: control, cgroups: cgroups,
                     describe: "worker of environment \(environmentLabel(environment))") {
        startChildProcess()
        ownPage = table.pageOffset(slot: slot, type: .processor, workerPage: page)
        workerMain(slot: slot, environment: environment, parentPid: start.rootPid)
    }
}

/// Forks a child that ends up the root's child: the image forks a go-between, which forks the
/// child and exits at once; the root, a subreaper, inherits the child, which waits for that
/// (and, with `cgroups`, until the image has moved it into them), then runs `main`.
private func forkChild(_ start: ImageStart, slot: Int, control: Channel, cgroups: [String] = [],
                       describe: String = "multiplexer", main: () -> Never) -> ImageMessage {
    var gate: StartGate
    do throws(Errno) {
        gate = try StartGate(cgroups: cgroups)
    } catch {
        return .failed(slot: slot, errno: error.code)
    }
    defer { gate.close() }
    switch forkForTheRoot(rootPid: start.rootPid, closingInChild: [control.fd]) {
    case .child:
        gate.waitInChild()
        // This image's scoreboard (the one mod_status shows in its children) names it.
        setScoreboardSlot(slot, pid: getpid(), starting: true)
        main()
    case .failed(let error):
        return .failed(slot: slot, errno: error.code)
    case .forked(let pid):
        do throws(CgroupError) {
            try gate.release(pid, into: cgroups)
        } catch {
            log(PERUSER_LOG_ERR, "peruser: cannot move a new \(describe) (pid \(pid)) into cgroup "
                + "\(error.directory); the worker is not started (\(error.errno))")
            return .failed(slot: slot, errno: error.errno.code)
        }
        return .spawned(slot: slot, pid: pid)
    }
}

enum ForkForTheRoot {
    /// In the forker: the child's pid.
    case forked(pid_t)
    case failed(Errno)
    /// In the child, once it is the root's.
    case child
}

/// Forks a child that the root (a subreaper) adopts: a go-between forks it and exits at once
/// (peruser_shim_fork_for_root: made with vfork, it copies none of this process's memory). The
/// child closes `closingInChild` and waits (at most 2 s, else it exits) until the root is its
/// parent, so that nothing it does is done as another process's child. Used by images for
/// their children and by the zygote for images.
func forkForTheRoot(rootPid: pid_t, closingInChild: [Int32]) -> ForkForTheRoot {
    let pid = peruser_shim_fork_for_root()
    if pid < 0 { return .failed(Errno(-pid)) }
    if pid > 0 { return .forked(pid) }
    for fd in closingInChild { close(fd) }
    // The go-between's exit hands this child to the root, a moment after the forker goes on
    // (vfork lets the forker go as the go-between leaves its memory, before the adoption):
    // look again soon, then less often.
    let deadline = monotonicMilliseconds() + 2000
    var pause: UInt32 = 20
    while getppid() != rootPid {
        guard monotonicMilliseconds() < deadline else { _exit(exitChildSick) }
        usleep(pause)
        pause = min(pause * 2, 1000)
    }
    return .child
}
