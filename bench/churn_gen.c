/* Connection churn generator for bench/scale_bench.py (--churn-gen c): the Python loop
 * cannot reach 50,000 connections/s on two cores, this can get closer.
 *
 *   gcc -O2 -o churn_gen bench/churn_gen.c && ./churn_gen SECONDS WORKERS MAX_PER_WORKER
 *
 * Forks WORKERS processes; each opens 8 loopback listeners of its own and loops
 * connect + accept + close (SO_LINGER 0 on the client: RST, no TIME_WAIT) until SECONDS
 * have passed or MAX_PER_WORKER connections were made. Each worker prints
 * "worker PID CONNS ERRORS SECONDS" on stdout. Bounded: alarm(SECONDS + 5) in every
 * process, PR_SET_PDEATHSIG so workers die with the parent, the parent reaps them all. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LISTENERS 8

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int worker(double seconds, long max)
{
	int ls[LISTENERS];
	struct sockaddr_in addr[LISTENERS];
	for (int i = 0; i < LISTENERS; i++) {
		socklen_t len = sizeof(addr[i]);
		ls[i] = socket(AF_INET, SOCK_STREAM, 0);
		addr[i].sin_family = AF_INET;
		addr[i].sin_port = 0;
		addr[i].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (ls[i] < 0 || bind(ls[i], (struct sockaddr *)&addr[i], sizeof(addr[i])) < 0 ||
		    listen(ls[i], 256) < 0 || getsockname(ls[i], (struct sockaddr *)&addr[i], &len) < 0) {
			perror("listener");
			return 1;
		}
	}
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	long n = 0, errors = 0;
	double start = now(), end = start + seconds;
	while (n < max) {
		if ((n & 255) == 0 && now() > end)
			break;
		int i = n % LISTENERS;
		int c = socket(AF_INET, SOCK_STREAM, 0);
		if (c < 0) {
			errors++;
			n++;
			continue;
		}
		setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		if (connect(c, (struct sockaddr *)&addr[i], sizeof(addr[i])) < 0) {
			errors++;
			close(c);
			n++;
			continue;
		}
		int a = accept(ls[i], NULL, NULL);
		close(c);
		if (a >= 0)
			close(a);
		else
			errors++;
		n++;
	}
	printf("worker %d %ld %ld %.3f\n", getpid(), n, errors, now() - start);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s SECONDS WORKERS MAX_PER_WORKER\n", argv[0]);
		return 2;
	}
	double seconds = atof(argv[1]);
	int workers = atoi(argv[2]);
	long max = atol(argv[3]);
	if (seconds <= 0 || seconds > 10 || workers < 1 || workers > 16 || max < 1) {
		fprintf(stderr, "bounds: 0 < SECONDS <= 10, 1 <= WORKERS <= 16, MAX_PER_WORKER >= 1\n");
		return 2;
	}
	alarm((unsigned)seconds + 5);
	pid_t pids[16];
	for (int w = 0; w < workers; w++) {
		pids[w] = fork();
		if (pids[w] == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() == 1)
				_exit(3);
			alarm((unsigned)seconds + 5);
			_exit(worker(seconds, max));
		}
	}
	int bad = 0;
	for (int w = 0; w < workers; w++) {
		int st = 0;
		if (pids[w] > 0 && waitpid(pids[w], &st, 0) > 0 && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
			bad++;
	}
	return bad ? 1 : 0;
}
