# /etc/profile.d/callerid.sh - export the Slurm job an ssh session was adopted into.
#
# Optional: pam_callerid.so puts SLURM_JOB_ID into the PAM environment, as
# pam_slurm_adopt does. This snippet is for processes that lost that environment
# (su -, env -i): it reads the job from the session's own cgroup: an adopted sshd (and so every shell it
# starts) sits in .../job_<id>/step_extern. Only that step counts, so a user
# cannot pick up a job id from anywhere else. Login shells read this file;
# for `ssh host cmd`, source it from /etc/bash.bashrc or the user's rc file.
if [ -z "${SLURM_JOB_ID:-}" ] && [ -r /proc/self/cgroup ]; then
    _callerid_job=$(sed -n 's|^.*/job_\([0-9][0-9]*\)/step_extern\(/.*\)\{0,1\}$|\1|p' /proc/self/cgroup | head -n 1)
    if [ -n "$_callerid_job" ]; then
        SLURM_JOB_ID=$_callerid_job
        SLURM_JOBID=$_callerid_job
        export SLURM_JOB_ID SLURM_JOBID
    fi
    unset _callerid_job
fi
