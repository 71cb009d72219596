// The image's side: an apache2 the root parent executed with PERUSER_IMAGE set and a
// configuration holding one environment's vhosts. It went through Apache's whole startup with
// that configuration (mod_ssl loaded that environment's keys only, mod_php made its own opcache),
// listens on nothing, and forks that environment's workers when the root asks.
import CApache
import CPeruserShim
import Glibc
import PeruserCore

struct ImageStart {
    let environment: Int
    let generation: UInt32
    let control: Int32
    let table: Int32
    let tableSize: Int
    let rootPid: pid_t
    /// The root's slot count (a graceful restart may keep an earlier ServerLimit's).
    let slots: Int

    /// From the environment variable; nil when this process is not an image (or it is garbled).
    static func fromEnvironment() -> ImageStart? {
        guard let raw = getenv(imageVariable) else { return nil }
        let fields = String(cString: raw).split(separator: ":").map(String.init)
        guard fields.count == 7, let environment = Int(fields[0]), environment >= 0,
              let generation = UInt32(fields[1]), let control = Int32(fields[2]), control > 2,
              let table = Int32(fields[3]), table > 2, let size = Int(fields[4]), size > 0,
              let root = Int32(fields[5]), root > 1, let slots = Int(fields[6]), slots > 0,
              slots <= mostServerLimit else { return nil }
        return ImageStart(environment: environment, generation: generation, control: control, table: table,
                          tableSize: size, rootPid: root, slots: slots)
    }
}

/// Set in pre_config of an image (each configuration pass: the module is reloaded between them).
nonisolated(unsafe) var imageStart: ImageStart?

@_cdecl("peruser_is_image")
public func peruserIsImage() -> Int32 {
    imageStart != nil ? 1 : 0
}

/// The image's run hook: never returns to Apache's restart loop.
func imageRun(_ start: ImageStart, pconf: OpaquePointer?, server: UnsafeMutablePointer<server_rec>) -> Never {
    unsetenv(imageVariable)  // nothing below (PHP's getenv, CGIs) needs to see it
    configurationPool = pconf
    let name = configuration.environments[start.environment]?.name ?? "\(start.environment)"
    func die(_ text: String) -> Never {
        log(PERUSER_LOG_EMERG, "peruser: process image of environment \(name): \(text)")
        exit(exitChildFatal)
    }
    _ = fcntl(start.control, F_SETFD, FD_CLOEXEC)
    _ = fcntl(start.table, F_SETFD, FD_CLOEXEC)
    guard start.environment < configuration.environments.count else { die("no such environment") }
    guard let retained = retainedLasting(), retained.initializeOnce() else { die("no retained data") }
    lasting = retained
    // Its sizes come from this image's configuration (the root's), never from the table's header.
    let pages = workerPagePools().total
    guard start.tableSize >= ChildTableLayout.size(slots: start.slots, environments: configuration.environments.count,
                                                   workerPages: pages) else { die("the child table is too small") }
    guard let mapped = mmap(nil, start.tableSize, PROT_READ | PROT_WRITE, MAP_SHARED, start.table, 0),
          mapped != MAP_FAILED else {
        die("cannot map the child table: \(Errno.current)")
    }
    let header = ChildTable(base: mapped, slotCount: start.slots, environmentCount: configuration.environments.count,
                            workerPageCount: pages)
    retained.pointee.table = mapped
    retained.pointee.tableSize = start.tableSize
    retained.pointee.tableFD = start.table
    retained.pointee.tableEnvironments = Int32(header.environmentCount)
    retained.pointee.scoreboardSlots = Int32(header.slotCount)
    sharedTable = header
    // A scoreboard of its own: this environment's workers are all it shows.
    guard ap_run_pre_mpm(server.pointee.process.pointee.pool, SB_SHARED) == OK else { die("no scoreboard") }
    channels = Array(repeating: EnvironmentChannels(), count: configuration.environments.count)
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
                                              slots: header.slotCount, pages: Int(UInt32.max >> 1))
            switch message {
            case .handoffEnd? where fd >= 0:
                channels[start.environment].handoffReceive.close()
                channels[start.environment].handoffReceive = FileDescriptor(raw: fd)
            case .handbackEnd? where fd >= 0:
                channels[start.environment].handbackSend.close()
                channels[start.environment].handbackSend = FileDescriptor(raw: fd)
            case .spawn(let slot, let page)?:
                if fd >= 0 { close(fd) }
                let answer = forkWorker(start, slot: slot, page: page, control: control)
                _ = answer.bytes.withUnsafeBytes { control.send(payload: $0) }
            default:
                if fd >= 0 { close(fd) }
            }
        }
    }
}

/// Forks a worker that ends up the root's child: the image forks a go-between, which forks the
/// worker and exits at once; the root, a subreaper, inherits the worker.
private func forkWorker(_ start: ImageStart, slot: Int, page: Int, control: Channel) -> ImageMessage {
    let ends = channels[start.environment]
    guard ends.handoffReceive.isOpen, ends.handbackSend.isOpen, let table = sharedTable else {
        return .failed(slot: slot, errno: 0)
    }
    let cgroups = configuration.environments[start.environment]?.confinement.cgroups ?? []
    var report = (read: FileDescriptor.none, write: FileDescriptor.none)
    var gate = (read: FileDescriptor.none, write: FileDescriptor.none)
    do throws(Errno) {
        report = try FileDescriptor.pipe()
        if !cgroups.isEmpty { gate = try FileDescriptor.pipe() }
    } catch {
        report.read.close(); report.write.close()
        return .failed(slot: slot, errno: error.code)
    }
    defer {
        report.read.close(); report.write.close()
        gate.read.close(); gate.write.close()
    }
    let between = fork()
    if between < 0 { return .failed(slot: slot, errno: Errno.current.code) }
    if between == 0 {
        let worker = fork()
        if worker == 0 {
            close(control.fd)
            report.read.close(); report.write.close()
            gate.write.close()
            // Wait to be the root's child (the go-between exits right after the fork).
            var waited = 0
            while getppid() != start.rootPid {
                guard waited < 2000 else { _exit(exitChildSick) }
                usleep(1000)
                waited += 1
            }
            if gate.read.isOpen {
                var go: UInt8 = 0
                let got = try? retryingInterrupts { read(gate.read.raw, &go, 1) }
                if got != 1 { _exit(exitChildSick) }  // not moved into its cgroups: never serve
                gate.read.close()
            }
            startChildProcess()
            ownPage = table.pageOffset(slot: slot, type: .processor, workerPage: page)
            workerMain(slot: slot, environment: start.environment, parentPid: start.rootPid)
        }
        var pid = Int32(worker < 0 ? -Errno.current.code : worker)
        _ = write(report.write.raw, &pid, 4)
        _exit(0)
    }
    report.write.close()
    var pid: Int32 = 0
    let got = (try? retryingInterrupts { read(report.read.raw, &pid, 4) }) ?? 0
    var status: Int32 = 0
    _ = try? retryingInterrupts { waitpid(between, &status, 0) }
    guard got == 4, pid > 1 else { return .failed(slot: slot, errno: got == 4 ? -pid : EIO) }
    if gate.write.isOpen {
        gate.read.close()
        do throws(CgroupError) {
            try moveIntoCgroups(pid, cgroups)
            _ = write(gate.write.raw, "g", 1)
        } catch {
            log(PERUSER_LOG_ERR, "peruser: cannot move a new worker of environment \(environmentLabel(start.environment)) "
                + "(pid \(pid)) into cgroup \(error.directory); the worker is not started (\(error.errno))")
            return .failed(slot: slot, errno: error.errno.code)
        }
    }
    return .spawned(slot: slot, pid: pid)
}
